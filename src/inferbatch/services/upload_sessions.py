"""Uploads (OpenAI's Uploads API): a file of up to 8 GB sent in parts, then composed.

An upload is created ``pending`` with the size, name, purpose and MIME type of the file to
be, and expires an hour later. Each part (at most 64 MB) streams straight to the blob store
as it arrives. Completing it composes the listed parts, in the order given, into the
file's blob (:meth:`BlobStore.compose`: no part is ever held in memory), checks the total
against the declared size and the md5 when one is given, and registers the file; the
part blobs are then deleted. Cancelling or expiring it deletes them too.

What cannot go wrong:

- Every part blob that may exist has a row naming it (the row is written before the
  bytes arrive), so nothing is left behind: the part blobs of every finished upload are
  deleted, by the call that finished it or, failing that (object storage down), by the
  leader's sweep (:func:`sweep`), which also expires uploads past their hour.
- A complete claims the upload first (a lease of :data:`COMPLETE_LEASE`), so one complete
  composes it at a time; the file row and the ``completed`` status are written in one
  transaction, fenced by the claim. A complete that fails (object storage down, a wrong
  md5, the database gone) deletes what it composed and leaves the upload pending with
  its parts: the same complete can be sent again. No half file is ever registered.
- A part for an upload that is not pending, a second complete, a cancel of a completed
  upload: 409 (``x-should-retry: false``). Part ids of another upload, listed twice, or
  adding up to other than the declared size, a wrong md5: 400, and the upload stays
  pending.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta

import psycopg

from inferbatch.blobstore import BlobStore, Composed, new_blob_key
from inferbatch.config import Settings
from inferbatch.db import files as file_rows
from inferbatch.db import uploads as upload_rows
from inferbatch.db.types import Conn, Pool
from inferbatch.domain import (
    FileRecord,
    Principal,
    UploadPartRecord,
    UploadRecord,
    UploadStatus,
    project_filter,
)
from inferbatch.errors import (
    Conflict,
    InferbatchError,
    InvalidRequest,
    NotFound,
    StorageUnavailable,
    TooLarge,
)
from inferbatch.ids import new_id
from inferbatch.protocol.uploads import UploadCompleteRequest, UploadCreateRequest
from inferbatch.services import idempotency as idempotency_service
from inferbatch.services import quotas
from inferbatch.services.batches import expiry_seconds
from inferbatch.services.files import FILE_PURPOSES
from inferbatch.services.idempotency import IdempotencyKey
from inferbatch.services.uploads import receive_upload

log = logging.getLogger(__name__)

UPLOAD_LIFETIME = timedelta(hours=1)
"""An upload not completed within this long expires (OpenAI's hour)."""
MAX_PART_BYTES = 64 * 1024 * 1024
"""The largest part (OpenAI's 64 MB; the SDK's default part size)."""
COMPLETE_LEASE = timedelta(minutes=10)
"""How long a complete holds an upload while it composes the parts (8 GB takes well under
this). One whose process died is taken over by the next complete after this long."""
SWEEP_LIMIT = 100
"""Uploads the sweep expires, and finished uploads it clears, per run."""
MAX_FILENAME = 255
_FORM_SLACK = 64 * 1024
"""Bytes of multipart framing allowed beyond a part's limit in ``content-length``."""

_MIME_TYPE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*(\s*;.*)?$")
BATCH_MIME_TYPES = (
    "application/jsonl",
    "application/x-jsonl",
    "application/jsonlines",
    "application/x-jsonlines",
    "application/x-ndjson",
    "application/json",
    "application/octet-stream",
    "text/jsonl",
    "text/plain",
)
"""What a ``batch`` upload may say it is (JSON Lines by any of its names)."""
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


def visible_status(upload: UploadRecord, now: datetime) -> UploadStatus:
    """The status a client sees: ``expired`` from the moment the hour is over, before the
    sweep has marked it."""
    if upload.status == "pending" and upload.expires_at <= now:
        return "expired"
    return upload.status


async def create(
    conn: Conn,
    user: Principal,
    body: UploadCreateRequest,
    settings: Settings,
    now: datetime,
    idempotency: IdempotencyKey | None = None,
) -> UploadRecord:
    """Validate a create request and insert the upload (``pending``, expiring in an hour);
    refused (429) when its bytes would pass the project's ``stored_bytes`` quota.
    Under an idempotency key already used for the same request, the upload made then."""
    if body.purpose not in FILE_PURPOSES:
        raise InvalidRequest(
            f"purpose must be one of {', '.join(map(repr, FILE_PURPOSES))}.", param="purpose"
        )
    if not 0 <= body.bytes <= settings.max_upload_bytes:
        raise InvalidRequest(
            f"bytes must be from 0 to {settings.max_upload_bytes} (the largest upload).",
            param="bytes",
        )
    filename = body.filename.strip()
    if not filename or len(filename) > MAX_FILENAME or "\x00" in filename:
        raise InvalidRequest(f"filename must be 1 to {MAX_FILENAME} characters.", param="filename")
    mime_type = body.mime_type.strip()
    if not _MIME_TYPE.match(mime_type):
        raise InvalidRequest(
            f"mime_type {body.mime_type!r} is not a MIME type such as 'application/jsonl'.",
            param="mime_type",
        )
    essence = mime_type.split(";")[0].strip().lower()
    if body.purpose == "batch" and essence not in BATCH_MIME_TYPES:
        raise InvalidRequest(
            f"A batch file is JSON Lines: mime_type must be one of {', '.join(BATCH_MIME_TYPES)}.",
            param="mime_type",
        )
    if body.expires_after is None:
        seconds = int(settings.file_retention_delta.total_seconds())
    else:
        seconds = expiry_seconds(body.expires_after.seconds, "expires_after.seconds")
    upload_id = new_id("upload_")
    earlier = await idempotency_service.claim(conn, user, idempotency, upload_id, now)
    if earlier is not None:
        upload = await upload_rows.get(conn, earlier, user.project_id)
        if upload is None:
            raise NotFound(f"The upload made under this key, {earlier!r}, is gone.")
        return upload
    # checked for the declared size now: the file it becomes is counted when it is made
    await quotas.admit_bytes(conn, user.project_id, body.bytes, now)
    return await upload_rows.insert(
        conn,
        upload_id=upload_id,
        owner_id=user.id,
        project_id=user.project_id,
        filename=filename,
        purpose=body.purpose,
        size=body.bytes,
        mime_type=mime_type,
        file_expires_seconds=seconds,
        created_at=now,
        expires_at=now + UPLOAD_LIFETIME,
    )


def _refusal(upload: UploadRecord, now: datetime, action: str) -> Conflict | None:
    """Why ``action`` cannot be done to ``upload`` now (None: it is pending and free)."""
    status = visible_status(upload, now)
    if status == "completed":
        return Conflict(f"Upload {upload.id!r} is already completed; {action} is not allowed.")
    if status != "pending":
        return Conflict(f"Upload {upload.id!r} is {status}; {action} is not allowed.")
    if upload.completing_at is not None and upload.completing_at > now - COMPLETE_LEASE:
        return Conflict(f"Upload {upload.id!r} is being completed; {action} is not allowed.")
    return None


async def _locked(conn: Conn, user: Principal | None, upload_id: str) -> UploadRecord:
    """The upload, locked for this transaction; 404 if it is not the user's (``user``
    None: anyone's)."""
    owner = project_filter(user) if user is not None else None
    upload = await upload_rows.get(conn, upload_id, owner, lock=True)
    if upload is None:
        raise NotFound(f"No upload with id {upload_id!r}.")
    return upload


async def add_part(
    db: Pool,
    blobs: BlobStore,
    settings: Settings,
    user: Principal,
    upload_id: str,
    *,
    content_type: str,
    content_length: str | None,
    body: AsyncIterator[bytes],
    now: datetime,
) -> UploadPartRecord:
    """Stream a multipart body's ``data`` field into a new part of a pending upload.

    The part's row is written first (no bytes yet), the bytes stream to its blob (413 past
    :data:`MAX_PART_BYTES`, or past what the upload may still hold), then the row records
    them, provided the upload is still pending. On any error the blob and the row go."""
    declared = int(content_length) if content_length and content_length.isdigit() else 0
    if declared > MAX_PART_BYTES + _FORM_SLACK:
        raise TooLarge(f"A part is at most {MAX_PART_BYTES} bytes.", param="data")
    key = new_blob_key("part")
    async with db.connection() as conn, conn.transaction():
        upload = await _locked(conn, user, upload_id)
        if refusal := _refusal(upload, now, "adding a part"):
            raise refusal
        room = settings.max_upload_bytes - await upload_rows.received_bytes(conn, upload.id)
        if room <= 0:
            raise InvalidRequest(
                f"Upload {upload.id!r} holds {settings.max_upload_bytes} bytes, the most an "
                "upload may.",
                param="data",
            )
        part = await upload_rows.add_part(
            conn, part_id=new_id("part_"), upload_id=upload.id, blob_key=key, created_at=now
        )
    limit = min(MAX_PART_BYTES, room)
    try:
        received = await receive_upload(
            content_type, body, blobs, limit, field="data", key=key, estimate_tokens=False
        )
    except TooLarge as exc:
        await _forget_part(db, part)
        if limit < MAX_PART_BYTES:
            message = f"The upload may hold {room} more bytes; this part is larger."
        else:
            message = f"A part is at most {MAX_PART_BYTES} bytes."
        raise TooLarge(message, param="data") from exc
    except BaseException:
        await _forget_part(db, part)  # receive_upload left no blob
        raise
    if received.blob_key is None:
        await _forget_part(db, part)
        raise InvalidRequest("A file part named 'data' is required.", param="data")
    try:
        async with db.connection() as conn, conn.transaction():
            return await _record_part(conn, part, received.size, settings, now)
    except BaseException:
        await _delete_blobs(blobs, [key], strict=False)
        await _forget_part(db, part)
        raise


async def _record_part(
    conn: Conn, part: UploadPartRecord, size: int, settings: Settings, now: datetime
) -> UploadPartRecord:
    """Record a part's ``size`` bytes as received, if its upload is still pending and may
    hold them; raises (409, 413) otherwise."""
    upload = await _locked(conn, None, part.upload_id)
    if refusal := _refusal(upload, now, "adding a part"):
        raise refusal
    held = await upload_rows.received_bytes(conn, upload.id)
    if held + size > settings.max_upload_bytes:
        raise TooLarge(
            f"The upload may hold {settings.max_upload_bytes - held} more bytes; this part "
            "is larger.",
            param="data",
        )
    finished = await upload_rows.finish_part(conn, part.id, size)
    if finished is None:
        raise Conflict(f"Upload {upload.id!r} was finished meanwhile.")
    return finished


async def _forget_part(db: Pool, part: UploadPartRecord) -> None:
    """Drop a part's row (its blob does not exist); if the database is down the row stays,
    harmless: it is never received, and goes when the upload is cleared."""
    try:
        async with db.connection() as conn:
            await upload_rows.drop_part(conn, part.id)
    except (psycopg.Error, OSError) as exc:
        log.warning("could not forget part %s: %s", part.id, exc)


async def complete(
    db: Pool,
    blobs: BlobStore,
    user: Principal,
    upload_id: str,
    body: UploadCompleteRequest,
    now: datetime,
) -> tuple[UploadRecord, FileRecord]:
    """Compose the listed parts, in order, into a new file; the upload is then
    ``completed`` with it. See the module docstring for what is checked and what a
    failure leaves (the upload pending, nothing registered)."""
    md5 = _md5(body.md5)
    part_ids = body.part_ids
    seen: set[str] = set()
    for part_id in part_ids:
        if part_id in seen:
            raise InvalidRequest(f"Part {part_id!r} is listed more than once.", param="part_ids")
        seen.add(part_id)
    token = secrets.token_hex(8)
    async with db.connection() as conn, conn.transaction():
        upload = await _locked(conn, user, upload_id)
        if refusal := _refusal(upload, now, "completing it"):
            raise refusal
        by_id = {p.id: p for p in await upload_rows.parts(conn, upload.id, part_ids)}
        total = 0
        for part_id in part_ids:
            part = by_id.get(part_id)
            if part is None:
                raise InvalidRequest(
                    f"Part {part_id!r} is not a part of upload {upload.id!r}.", param="part_ids"
                )
            if part.bytes is None:
                raise InvalidRequest(f"Part {part_id!r} is still being received.", param="part_ids")
            total += part.bytes
        if total != upload.bytes:
            raise InvalidRequest(
                f"The parts hold {total} bytes; upload {upload.id!r} was created for "
                f"{upload.bytes}.",
                param="part_ids",
            )
        if await upload_rows.claim_completion(conn, upload.id, token, now, COMPLETE_LEASE) is None:
            raise Conflict(f"Upload {upload.id!r} is being completed.")
    key = new_blob_key("upload")
    try:
        composed = await _compose(blobs, key, [by_id[p].blob_key for p in part_ids], md5)
        if composed.size != upload.bytes:  # a part blob is not what its row says
            raise InferbatchError(f"The parts of upload {upload.id!r} changed while stored.")
        if md5 is not None and composed.md5 != md5:
            raise InvalidRequest(
                f"The md5 of the parts is {composed.md5}, not {md5}. The upload is still "
                "pending: complete it again with the right parts or md5.",
                param="md5",
            )
    except BaseException as exc:
        await _delete_blobs(blobs, [key], strict=False)
        await _release(db, upload.id, token)
        if isinstance(exc, FileNotFoundError):
            raise InferbatchError(f"A part of upload {upload.id!r} is missing.") from exc
        raise
    try:
        async with db.connection() as conn, conn.transaction():
            record = await file_rows.insert(
                conn,
                file_id=new_id("file-"),
                owner_id=upload.owner_id,
                project_id=upload.project_id,
                purpose=upload.purpose,
                filename=upload.filename,
                size=composed.size,
                sha256=composed.sha256,
                blob_key=key,
                expires_at=now + timedelta(seconds=upload.file_expires_seconds),
            )
            done = await upload_rows.mark_completed(conn, upload.id, token, record.id, now)
            if done is None:  # another complete took it over after the lease: it stands
                raise Conflict(f"Upload {upload.id!r} was completed by another request.")
    except BaseException:
        await _delete_blobs(blobs, [key], strict=False)
        await _release(db, upload.id, token)
        raise
    await clear(db, blobs, upload.id, now, strict=False)
    return done, record


def _md5(value: str | None) -> str | None:
    if value is None:
        return None
    if not _MD5.match(value):
        raise InvalidRequest("md5 must be 32 hexadecimal digits.", param="md5")
    return value.lower()


async def _compose(blobs: BlobStore, key: str, sources: Sequence[str], md5: str | None) -> Composed:
    """``blobs.compose`` in a thread. A thread cannot be stopped: if the caller is
    cancelled meanwhile, the blob it goes on to write is deleted when it is done."""
    work = asyncio.ensure_future(
        asyncio.to_thread(blobs.compose, key, sources, md5=md5 is not None)
    )
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        loop = asyncio.get_running_loop()

        def discard(done: asyncio.Future[Composed]) -> None:
            if not done.cancelled() and done.exception() is None:
                loop.run_in_executor(None, blobs.delete, key)

        work.add_done_callback(discard)
        raise


async def _release(db: Pool, upload_id: str, token: str) -> None:
    """Give the claim back; if the database is down, the lease runs out instead."""
    try:
        async with db.connection() as conn:
            await upload_rows.release_completion(conn, upload_id, token)
    except (psycopg.Error, OSError) as exc:
        log.warning("could not release the completion of %s: %s", upload_id, exc)


async def cancel(
    db: Pool, blobs: BlobStore, user: Principal, upload_id: str, now: datetime
) -> UploadRecord:
    """Cancel a pending upload and delete its parts. Cancelling a cancelled upload
    answers it as it is; a completed, expired or completing one answers 409."""
    async with db.connection() as conn, conn.transaction():
        upload = await _locked(conn, user, upload_id)
        if upload.status == "cancelled":
            return upload
        if refusal := _refusal(upload, now, "cancelling it"):
            raise refusal
        done = await upload_rows.cancel(conn, upload.id, now, COMPLETE_LEASE)
        assert done is not None  # locked and checked above
    await clear(db, blobs, upload.id, now, strict=False)
    return done


async def clear(db: Pool, blobs: BlobStore, upload_id: str, now: datetime, *, strict: bool) -> bool:
    """Delete the part blobs of a finished upload, then their rows. Returns whether it is
    now clear. With ``strict``, a blob store or database failure is raised; without, it is
    logged and the leader's sweep tries again later."""
    try:
        async with db.connection() as conn:
            parts = await upload_rows.all_parts(conn, upload_id)
        await _delete_blobs(blobs, [p.blob_key for p in parts], strict=True)
        async with db.connection() as conn:
            return await upload_rows.clear(conn, upload_id, [p.id for p in parts], now)
    except (StorageUnavailable, psycopg.Error, OSError) as exc:
        if strict:
            raise
        log.warning("the parts of upload %s stay until the next sweep: %s", upload_id, exc)
        return False


async def _delete_blobs(blobs: BlobStore, keys: Sequence[str], *, strict: bool) -> None:
    for key in keys:
        try:
            await asyncio.to_thread(blobs.delete, key)
        except (StorageUnavailable, OSError) as exc:
            if strict:
                raise
            log.warning("could not delete blob %s: %s", key, exc)


async def sweep(db: Pool, blobs: BlobStore, now: datetime, limit: int = SWEEP_LIMIT) -> bool:
    """The leader's duty: expire pending uploads past their hour (unless a complete is
    composing them), and delete the part blobs and rows of finished uploads still holding
    some. Both reads use partial indexes of live uploads. Returns whether more may be due."""
    async with db.connection() as conn:
        expired = await upload_rows.expire_due(conn, now, COMPLETE_LEASE, limit)
        due = await upload_rows.uncleared(conn, limit)
    if expired:
        log.info("%d uploads expired", len(expired))
    for upload_id in due:
        await clear(db, blobs, upload_id, now, strict=True)
    return len(expired) == limit or len(due) == limit
