"""Storing, listing, reading and deleting files (metadata rows + blob contents)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from inferbatch.blobstore import BlobStore, open_stream
from inferbatch.config import Settings
from inferbatch.db import files as file_rows
from inferbatch.db.types import Pool
from inferbatch.domain import FileRecord, Principal, project_filter
from inferbatch.errors import InvalidRequest, NotFound, StorageUnavailable, TooLarge
from inferbatch.ids import new_id
from inferbatch.scheduler.validation import FileCheck, check_file
from inferbatch.services import idempotency as idempotency_service
from inferbatch.services import quotas
from inferbatch.services.batches import expiry_seconds
from inferbatch.services.uploads import receive_upload

log = logging.getLogger(__name__)

FILE_PURPOSES = ("batch", "user_data", "assistants", "fine-tune", "vision", "evals")
"""What an upload may say it is for (OpenAI's list). All are stored; only ``batch`` files
feed a batch. ``batch_output`` is the purpose of the files a batch writes."""


def file_expiry(fields: dict[str, str], default: float) -> float:
    """Seconds from creation until the file expires: ``expires_after[anchor]`` (only
    ``created_at``) with ``expires_after[seconds]`` (1 hour to 30 days), as OpenAI
    accepts them; ``default`` without them."""
    anchor = fields.get("expires_after[anchor]")
    raw = fields.get("expires_after[seconds]")
    if anchor is None and raw is None:
        return default
    if anchor != "created_at":
        raise InvalidRequest(
            "expires_after[anchor] must be 'created_at'.", param="expires_after.anchor"
        )
    if raw is None or not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest(
            "expires_after[seconds] must be an integer number of seconds.",
            param="expires_after.seconds",
        )
    return expiry_seconds(int(raw), "expires_after.seconds")


async def upload(
    db: Pool,
    blobs: BlobStore,
    settings: Settings,
    user: Principal,
    *,
    content_type: str,
    content_length: str | None,
    body: AsyncIterator[bytes],
    now: datetime,
    validate: bool = False,
    idempotency_key: str | None = None,
) -> FileRecord:
    """Stream a multipart upload (fields ``purpose``, ``file``, optional
    ``expires_after[anchor]`` and ``expires_after[seconds]``) into the blob store and
    record it, its lines counted and (a ``batch`` file) its tokens estimated. With
    ``validate``, a ``batch`` file's lines are all checked first, and a file with an
    invalid line is refused (400 naming the first ones); a file the project's
    ``stored_bytes`` quota has no room for is refused (429). Nothing is kept on error.
    Under an ``idempotency_key`` already used for the same upload, the file stored then
    (and nothing new is kept)."""
    limit = settings.max_file_bytes
    if content_length and content_length.isdigit() and int(content_length) > limit + 64 * 1024:
        raise TooLarge(f"The file is larger than the limit of {limit} bytes.", param="file")
    received = await receive_upload(content_type, body, blobs, limit)
    try:
        purpose = received.fields.get("purpose")
        if purpose not in FILE_PURPOSES:
            raise InvalidRequest(
                f"purpose must be one of {', '.join(map(repr, FILE_PURPOSES))}.", param="purpose"
            )
        if received.blob_key is None:
            raise InvalidRequest("A file part named 'file' is required.", param="file")
        seconds = file_expiry(received.fields, settings.file_retention_delta.total_seconds())
        if validate and purpose == "batch":
            await _check_lines(blobs, received.blob_key, settings.max_requests_per_batch)
        key = idempotency_service.parse(
            idempotency_key,
            "POST /v1/files",
            received.sha256,
            purpose,
            received.filename or "",
            str(seconds),
            str(validate),
        )
        file_id = new_id("file-")
        async with db.connection() as conn:
            earlier = await idempotency_service.claim(conn, user, key, file_id, now)
            if earlier is None:
                await quotas.admit_bytes(conn, user.project_id, received.size, now)
                return await file_rows.insert(
                    conn,
                    file_id=file_id,
                    owner_id=user.id,
                    project_id=user.project_id,
                    purpose=purpose,
                    filename=received.filename or "upload.jsonl",
                    size=received.size,
                    sha256=received.sha256,
                    blob_key=received.blob_key,
                    expires_at=now + timedelta(seconds=seconds),
                    line_count=received.lines if purpose == "batch" else None,
                    token_estimate=received.tokens if purpose == "batch" else None,
                )
            record = await file_rows.get(conn, earlier, user.project_id)
        if record is None:
            raise NotFound(f"The file made under this key, {earlier!r}, is deleted.")
        await _forget(blobs, received.blob_key)
        return record
    except BaseException:
        if received.blob_key is not None:
            await _forget(blobs, received.blob_key)
        raise


async def _forget(blobs: BlobStore, key: str) -> None:
    """Delete the blob of an upload that is not kept (no row names it)."""
    try:
        await asyncio.to_thread(blobs.delete, key)
    except StorageUnavailable as exc:  # keep the original error
        log.warning("could not delete the blob of a refused upload: %s", exc)


async def _check_lines(blobs: BlobStore, key: str, max_requests: int) -> None:
    def run() -> FileCheck:
        with blobs.open_reader(key) as reader:
            return check_file(reader, max_requests)

    check = await asyncio.to_thread(run)
    if check.error_count:
        first = check.errors[0]
        listed = "; ".join(
            f"line {e.line}: {e.message}" if e.line else e.message for e in check.errors[:5]
        )
        more = check.error_count - min(5, len(check.errors))
        raise InvalidRequest(
            f"{check.error_count} invalid lines, nothing was stored: {listed}"
            + (f"; and {more} more." if more > 0 else ""),
            param=f"file.line[{first.line}]" if first.line else "file",
            code=first.code,
        )


async def get(db: Pool, user: Principal, file_id: str) -> FileRecord:
    async with db.connection() as conn:
        record = await file_rows.get(conn, file_id, project_filter(user))
    if record is None:
        raise NotFound(f"No file with id {file_id!r}.")
    return record


async def delete(db: Pool, blobs: BlobStore, user: Principal, file_id: str) -> FileRecord:
    """Delete the file's bytes, then its row: while the blob store is down this answers
    503 and changes nothing (the other order would leave bytes no row points to)."""
    await asyncio.to_thread(blobs.delete, (await get(db, user, file_id)).blob_key)
    async with db.connection() as conn:
        record = await file_rows.delete(conn, file_id, project_filter(user))
    if record is None:
        raise NotFound(f"No file with id {file_id!r}.")
    return record


async def content(db: Pool, blobs: BlobStore, user: Principal, file_id: str) -> FileRecord:
    """The file's record, after checking its bytes are still there (read them in a thread,
    or with :func:`open_content`)."""
    record = await get(db, user, file_id)
    if not await asyncio.to_thread(blobs.exists, record.blob_key):
        raise NotFound(f"The content of file {file_id!r} is gone.")
    return record


async def open_content(
    db: Pool, blobs: BlobStore, user: Principal, file_id: str
) -> tuple[FileRecord, AsyncIterator[bytes]]:
    """The file's record and its bytes as chunks read in a thread. The blob is opened
    here, so a missing blob (404) or an unavailable store (503) is raised before a
    response starts."""
    record = await get(db, user, file_id)
    try:
        chunks = await open_stream(blobs, record.blob_key)
    except FileNotFoundError as exc:
        raise NotFound(f"The content of file {file_id!r} is gone.") from exc
    return record, chunks
