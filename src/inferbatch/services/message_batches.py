"""Anthropic's Message Batches on the queue: create, read, list, cancel, results, delete.

A Message Batch is a batch of endpoint ``/v1/messages``: its requests are written, on
create, as an input file of OpenAI batch lines (``{"custom_id", "method": "POST", "url":
"/v1/messages", "body": params}``), and from there it runs as every batch does (ingest,
the queue, workers, finalize), within Anthropic's 24 hours.

Anthropic has no failed batch, so everything ingest would refuse is refused on create,
before anything is stored: a 400 that names the first bad ``requests[i]...`` path.

How a batch reads as a Message Batch (:func:`message_batch`):

- ``processing_status``: ``in_progress`` (validating, in progress, finalizing),
  ``canceling`` (cancelling), ``ended`` (completed, cancelled, expired, failed).
- ``request_counts``: every request is ``processing`` until the batch has ended, as
  Anthropic counts them. Then ``succeeded`` is the output file's lines (completed
  requests), and the error file's lines (``failed_count``) split into ``canceled`` (the
  requests that ended cancelled: the batch was cancelled before they ran), ``expired``
  (those still unsettled at the deadline) and ``errored`` (the rest: the engine refused
  them or they ran out of attempts). A batch whose input was refused at ingest (a
  safety net) has every request ``errored``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import ijson  # type: ignore[import-untyped]
import orjson
from pydantic import ValidationError

from inferbatch.blobstore import BlobStore, new_blob_key
from inferbatch.config import Settings
from inferbatch.db import batches, files
from inferbatch.db import message_batches as rows
from inferbatch.db.types import Pool
from inferbatch.domain import (
    MESSAGES_ENDPOINT,
    TERMINAL_BATCH_STATUSES,
    BatchRecord,
    Principal,
    project_filter,
)
from inferbatch.errors import Conflict, InvalidRequest, NotFound, StorageUnavailable
from inferbatch.ids import new_id
from inferbatch.protocol.anthropic import (
    MessageBatch,
    MessageBatchRequestCounts,
    MessageBatchRequestParam,
)
from inferbatch.services import quotas
from inferbatch.services.estimate import request_tokens
from inferbatch.services.message_results import (
    open_readers,
    result_line,
    stream_lines,
    unprocessed_line,
)

log = logging.getLogger(__name__)

WINDOW = "24h"
"""A Message Batch ends 24 hours after it was created, at the latest (Anthropic's rule)."""
PRIORITY = 1
FLUSH_BYTES = 1 << 20


# -- create ---------------------------------------------------------------------------------


def _path(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".")


def _invalid(exc: ValidationError, prefix: str) -> InvalidRequest:
    """The first error of a wire model's validation, naming its path (``requests[3].
    params.max_tokens``)."""
    first = exc.errors()[0]
    path = _path(prefix, tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return InvalidRequest(f"{path}: {message}." if path else f"{message}.", param=path or None)


def _value(events: Iterator[tuple[str, Any]], event: str, value: Any) -> Any:
    """The JSON value that starts with ``event``, built from the events that follow."""
    if event not in ("start_map", "start_array"):
        return value
    builder = ijson.ObjectBuilder()
    builder.event(event, value)
    depth = 1
    for event, value in events:
        builder.event(event, value)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
            if depth == 0:
                break
    return builder.value


def _requests(source: IO[bytes]) -> Iterator[Any]:
    """The entries of the body's ``requests`` list, one at a time, as the body is read:
    memory holds one entry, never the body. The body's outer shape is checked on the way
    (an object whose only key is a non-empty ``requests`` list)."""
    events = ijson.basic_parse(source, use_float=True)
    try:
        first = next(events, None)
        if first is None or first[0] != "start_map":
            raise InvalidRequest("The body must be a JSON object.")
        found = False
        for event, key in events:
            if event == "end_map":
                break
            event, value = next(events)
            if key != "requests":
                raise InvalidRequest(f"{key}: Extra inputs are not permitted.", param=str(key))
            found = True
            if event != "start_array":
                raise InvalidRequest("requests: Input should be a valid list.", param="requests")
            count = 0
            for event, value in events:
                if event == "end_array":
                    break
                count += 1
                yield _value(events, event, value)
            if count == 0:
                raise InvalidRequest(
                    "requests: List should have at least 1 item after validation, not 0.",
                    param="requests",
                )
        if not found:
            raise InvalidRequest("requests: Field required.", param="requests")
        for _ in events:  # the parser refuses anything after the object
            pass
    except ijson.JSONError as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc}.") from exc


@dataclass(frozen=True, slots=True)
class WrittenInput:
    """A Message Batch's requests as stored: how many, the blob's size and digest, and
    their token estimate (:mod:`inferbatch.services.estimate`)."""

    requests: int
    bytes: int
    sha256: str
    tokens: int


def write_input(source: IO[bytes], blobs: BlobStore, key: str, max_requests: int) -> WrittenInput:
    """Check a create body (read from ``source`` as it is parsed) and write its requests
    to the blob ``key`` as batch lines. Raises
    :class:`InvalidRequest` for the first bad request, and then no blob is left.
    Blocking (run it in a thread)."""
    seen: dict[str, int] = {}
    count = tokens = 0
    with blobs.open_writer(key) as writer:
        buffer = bytearray()
        for i, item in enumerate(_requests(source)):
            if i >= max_requests:
                raise InvalidRequest(
                    f"requests: a Message Batch holds at most {max_requests} requests.",
                    param="requests",
                )
            try:
                request = MessageBatchRequestParam.model_validate(item)
            except ValidationError as exc:
                raise _invalid(exc, f"requests[{i}]") from None
            first = seen.setdefault(request.custom_id, i)
            if first != i:
                raise InvalidRequest(
                    f"requests[{i}].custom_id: {request.custom_id!r} is also the custom_id "
                    f"of requests[{first}]; each must be unique within the batch.",
                    param=f"requests[{i}].custom_id",
                )
            line = {
                "custom_id": request.custom_id,
                "method": "POST",
                "url": MESSAGES_ENDPOINT,
                "body": item["params"],  # as it arrived: engines read their own fields
            }
            buffer += orjson.dumps(line)
            buffer += b"\n"
            count += 1
            tokens += request_tokens(item["params"], MESSAGES_ENDPOINT)
            if len(buffer) >= FLUSH_BYTES:
                writer.write(bytes(buffer))
                buffer.clear()
        if buffer:
            writer.write(bytes(buffer))
    return WrittenInput(count, writer.size, writer.sha256, tokens)


async def create(
    db: Pool, blobs: BlobStore, settings: Settings, user: Principal, raw: IO[bytes], now: datetime
) -> BatchRecord:
    """Check the body, store its requests as the batch's input file and create the batch
    (its file row and its batch row in one transaction), refused (429) when the project's
    quotas leave no room for its bytes or its requests. Nothing is kept on error."""
    key = new_blob_key("upload")
    writing = asyncio.ensure_future(
        asyncio.to_thread(write_input, raw, blobs, key, settings.max_message_batch_requests)
    )
    try:
        written = await asyncio.shield(writing)
        batch_id = new_id("msgbatch_")
        async with db.connection() as conn, conn.transaction():
            await quotas.admit_bytes(conn, user.project_id, written.bytes, now)
            await quotas.admit_batch(
                conn, user.project_id, requests=written.requests, tokens=written.tokens, now=now
            )
            record = await files.insert(
                conn,
                file_id=new_id("file-"),
                owner_id=user.id,
                project_id=user.project_id,
                purpose="batch",
                filename=f"{batch_id}_requests.jsonl",
                size=written.bytes,
                sha256=written.sha256,
                blob_key=key,
                expires_at=now + settings.file_retention_delta,
                line_count=written.requests,
                token_estimate=written.tokens,
            )
            await batches.insert(
                conn,
                batch_id=batch_id,
                owner_id=user.id,
                project_id=user.project_id,
                input_file_id=record.id,
                endpoint=MESSAGES_ENDPOINT,
                completion_window=WINDOW,
                deadline_at=now + timedelta(hours=24),
                created_at=now,
                priority=PRIORITY,
                dedup_scope=settings.default_dedup_scope,
                metadata=None,
                output_expires_seconds=None,
                quota_requests=written.requests,
                quota_tokens=written.tokens,
            )
            return await rows.set_total(conn, batch_id, written.requests)
    except InvalidRequest:
        raise  # refused before anything was stored
    except BaseException:
        if not writing.done():
            # cancelled (the client left) while the thread writes on: let it finish, so
            # that the blob is not put in place after it is deleted below
            with contextlib.suppress(BaseException):
                await writing
        try:
            await asyncio.to_thread(blobs.delete, key)
        except StorageUnavailable as exc:  # keep the original error; no row names the blob
            log.warning("could not delete the input of a batch not created: %s", exc)
        raise


# -- reading --------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _ended_at(b: BatchRecord) -> datetime | None:
    return {
        "completed": b.completed_at,
        "cancelled": b.cancelled_at,
        "expired": b.expired_at,
        "failed": b.failed_at,
    }.get(b.status)


def request_counts(b: BatchRecord) -> MessageBatchRequestCounts:
    """Anthropic's counts of the batch (see the module docstring)."""
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if b.status not in TERMINAL_BATCH_STATUSES:
        counts["processing"] = b.total_count
    elif b.status == "failed":
        counts["errored"] = b.total_count
    else:
        counts["succeeded"] = b.completed_count
        counts["canceled"] = b.cancelled_count
        counts["expired"] = b.expired_count
        counts["errored"] = b.failed_count - b.cancelled_count - b.expired_count
    return MessageBatchRequestCounts(**counts)


def message_batch(b: BatchRecord, base_url: str) -> MessageBatch:
    """The Message Batch object of ``b``; ``base_url`` is where this API is served
    (``results_url`` is below it)."""
    ended = b.status in TERMINAL_BATCH_STATUSES
    status = "ended" if ended else "canceling" if b.status == "cancelling" else "in_progress"
    return MessageBatch(
        id=b.id,
        processing_status=status,
        request_counts=request_counts(b),
        ended_at=_utc(_ended_at(b)) if ended else None,
        created_at=b.created_at.astimezone(UTC),
        expires_at=b.deadline_at.astimezone(UTC),
        archived_at=None,
        cancel_initiated_at=_utc(b.cancelling_at),
        results_url=f"{base_url.rstrip('/')}/v1/messages/batches/{b.id}/results" if ended else None,
    )


async def get(db: Pool, user: Principal, batch_id: str) -> BatchRecord:
    async with db.connection() as conn:
        batch = await rows.get(conn, batch_id, project_filter(user))
    if batch is None:
        raise NotFound(f"No Message Batch with id {batch_id!r}.")
    return batch


async def list_page(
    db: Pool, user: Principal, *, after_id: str | None, before_id: str | None, limit: int
) -> tuple[list[BatchRecord], bool]:
    """A page of the user's Message Batches, newest first, and whether there are more in
    the direction asked for (older after ``after_id``, newer before ``before_id``)."""
    if after_id is not None and before_id is not None:
        raise InvalidRequest("Give after_id or before_id, not both.", param="before_id")
    async with db.connection() as conn:
        found = await rows.list_page(
            conn, project_filter(user), after_id=after_id, before_id=before_id, limit=limit
        )
    if len(found) <= limit:
        return found, False
    # one more than asked for: beyond the page in the direction of travel
    return (found[1:] if before_id is not None else found[:limit]), True


# -- changing -------------------------------------------------------------------------------


async def cancel(db: Pool, user: Principal, batch_id: str, now: datetime) -> BatchRecord:
    """Start cancelling: queued requests are cancelled, running ones finish. A batch
    already canceling, or finalizing (it ends on its own in a moment), is returned as it
    is; an ended one cannot be cancelled."""
    async with db.connection() as conn, conn.transaction():
        batch = await rows.get(conn, batch_id, project_filter(user))
        if batch is None:
            raise NotFound(f"No Message Batch with id {batch_id!r}.")
        if batch.status in TERMINAL_BATCH_STATUSES:
            raise Conflict(f"Message Batch {batch_id!r} has ended; it cannot be canceled.")
        if batch.status in ("validating", "in_progress"):
            await batches.request_cancel(conn, batch_id, now)
        changed = await rows.get(conn, batch_id, None)
    assert changed is not None
    return changed


async def delete(db: Pool, blobs: BlobStore, user: Principal, batch_id: str) -> None:
    """Delete an ended batch: the bytes of its files first (while the blob store is down
    this answers 503 and changes nothing), then its files, requests and the batch itself,
    in one transaction."""
    batch = await get(db, user, batch_id)
    if batch.status not in TERMINAL_BATCH_STATUSES:
        raise Conflict(
            f"Message Batch {batch_id!r} is still processing; cancel it, and delete it once "
            "it has ended."
        )
    ids = [i for i in (batch.input_file_id, batch.output_file_id, batch.error_file_id) if i]
    async with db.connection() as conn:
        records = [r for i in ids if (r := await files.get(conn, i, None)) is not None]
    for record in records:
        await asyncio.to_thread(blobs.delete, record.blob_key)
    async with db.connection() as conn, conn.transaction():
        if not await rows.delete_ended(conn, batch_id):
            raise NotFound(f"No Message Batch with id {batch_id!r}.")
        await files.delete_many(conn, ids)


async def results(
    db: Pool, blobs: BlobStore, user: Principal, batch_id: str
) -> AsyncIterator[bytes]:
    """The batch's result lines (JSONL), once it has ended. Its files are opened here, so
    a missing one (404) or an unavailable store (503) is raised before a response starts."""
    batch = await get(db, user, batch_id)
    if batch.status not in TERMINAL_BATCH_STATUSES:
        raise Conflict(
            f"Message Batch {batch_id!r} has not ended yet; its results are available once "
            "its processing_status is 'ended'."
        )
    convert: Callable[[bytes], bytes] = result_line
    ids = [i for i in (batch.output_file_id, batch.error_file_id) if i]
    if batch.status == "failed":  # the input refused as a whole: each request errored
        why = (batch.errors or [{}])[0].get("message") or "The request could not be processed."
        convert, ids = unprocessed_line(str(why)), [batch.input_file_id]
    async with db.connection() as conn:
        records = [await files.get(conn, i, None) for i in ids]
    gone = NotFound(f"The results of Message Batch {batch_id!r} are no longer available.")
    if any(r is None for r in records):
        raise gone
    try:
        readers = await open_readers(blobs, [r.blob_key for r in records if r is not None])
    except FileNotFoundError as exc:
        raise gone from exc
    return stream_lines(readers, convert)
