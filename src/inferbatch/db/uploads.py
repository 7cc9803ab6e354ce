"""Upload and part rows (OpenAI's Uploads API). Part bytes live in the blob store.

An upload is ``pending`` until it is completed (its parts composed into a file),
cancelled, or expired (an hour after creation). Every change of status is conditional and
says whether it happened. Statements that must not race a status change lock the upload
row ``FOR NO KEY UPDATE`` for their short transaction: adding a part and finishing it,
claiming and finishing a completion, cancelling.

A part row is written before its bytes arrive and names the blob they go to, so every
part blob that may exist has a row; once the upload is over, the rows go with their
blobs (:func:`clear`). Completing an upload is claimed with a token and a time (a lease):
one complete composes at a time, and a complete whose process died is taken over after
the lease. The leader's sweep reads two partial indexes, so its cost follows the live
uploads, never the finished ones: ``uploads_pending_expiry`` (pending, by expiry) and
``uploads_uncleared`` (finished, with part blobs still to delete).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from inferbatch.db.types import Conn
from inferbatch.domain import DEFAULT_PROJECT_ID, UploadPartRecord, UploadRecord

_COLUMNS = """id, owner_id, filename, purpose, bytes, mime_type, file_expires_seconds,
    status, created_at, expires_at, completing_at, file_id, project_id"""
_PART_COLUMNS = "id, upload_id, blob_key, bytes, created_at"

INSERT = f"""
INSERT INTO uploads (id, owner_id, filename, purpose, bytes, mime_type, file_expires_seconds,
    created_at, expires_at, project_id)
VALUES (%(id)s, %(owner)s, %(filename)s, %(purpose)s, %(bytes)s, %(mime_type)s,
    %(file_expires)s, %(created)s, %(expires)s, %(project)s)
RETURNING {_COLUMNS}
"""
"""A new pending upload."""

GET = f"""
SELECT {_COLUMNS} FROM uploads
WHERE id = %(id)s AND (%(project)s::text IS NULL OR project_id = %(project)s)
"""
"""The upload, if it exists and (unless the project is NULL) is of the project."""

RECEIVED_BYTES = """
SELECT coalesce(sum(bytes), 0)::bigint AS n FROM upload_parts
WHERE upload_id = %s AND bytes IS NOT NULL
"""
"""Bytes of the upload's parts received whole (listed in a complete or not)."""

ADD_PART = f"""
INSERT INTO upload_parts (id, upload_id, blob_key, created_at)
VALUES (%(id)s, %(upload)s, %(key)s, %(created)s)
RETURNING {_PART_COLUMNS}
"""
"""A part whose bytes are about to arrive (``bytes`` NULL)."""

FINISH_PART = f"""
UPDATE upload_parts SET bytes = %(bytes)s
WHERE id = %(id)s AND bytes IS NULL
RETURNING {_PART_COLUMNS}
"""
"""Record that a part's bytes are stored whole."""

DROP_PART = "DELETE FROM upload_parts WHERE id = %s"
"""Forget a part (its blob was never completed, or was deleted)."""

PARTS = f"""
SELECT {_PART_COLUMNS} FROM upload_parts WHERE upload_id = %(upload)s AND id = ANY(%(ids)s)
"""
"""The named parts of this upload (another upload's ids find nothing)."""

ALL_PARTS = f"SELECT {_PART_COLUMNS} FROM upload_parts WHERE upload_id = %s ORDER BY id"
"""Every part row of the upload, received or still arriving."""

CLAIM_COMPLETION = f"""
UPDATE uploads SET completing_token = %(token)s, completing_at = %(now)s
WHERE id = %(id)s AND status = 'pending' AND expires_at > %(now)s
  AND (completing_at IS NULL OR completing_at <= %(now)s - %(lease)s)
RETURNING {_COLUMNS}
"""
"""Claim the composing of a pending, unexpired upload no live complete holds."""

RELEASE_COMPLETION = """
UPDATE uploads SET completing_token = NULL, completing_at = NULL
WHERE id = %(id)s AND completing_token = %(token)s
"""
"""Give up a claim (the upload stays pending); a no-op if it was taken over."""

MARK_COMPLETED = f"""
UPDATE uploads SET status = 'completed', file_id = %(file)s, finished_at = %(now)s,
    completing_token = NULL, completing_at = NULL
WHERE id = %(id)s AND status = 'pending' AND completing_token = %(token)s
RETURNING {_COLUMNS}
"""
"""Finish a claimed completion with its file: only the claim's holder can."""

CANCEL = f"""
UPDATE uploads SET status = 'cancelled', finished_at = %(now)s
WHERE id = %(id)s AND status = 'pending' AND expires_at > %(now)s
  AND (completing_at IS NULL OR completing_at <= %(now)s - %(lease)s)
RETURNING {_COLUMNS}
"""
"""Cancel a pending, unexpired upload that no live complete is composing."""

EXPIRE_DUE = """
UPDATE uploads SET status = 'expired', finished_at = %(now)s
WHERE id IN (
    SELECT id FROM uploads
    WHERE status = 'pending' AND expires_at <= %(now)s
      AND (completing_at IS NULL OR completing_at <= %(now)s - %(lease)s)
    ORDER BY expires_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""
"""Pending uploads past their expiry that no live complete holds: expired (index
``uploads_pending_expiry``)."""

UNCLEARED = """
SELECT id FROM uploads
WHERE status <> 'pending' AND cleared_at IS NULL
ORDER BY finished_at LIMIT %s
"""
"""Finished uploads whose part blobs may remain, oldest first (index
``uploads_uncleared``)."""

DROP_PARTS = "DELETE FROM upload_parts WHERE upload_id = %s AND id = ANY(%s)"
"""Forget these parts of a finished upload (their blobs are deleted)."""

MARK_CLEARED = """
UPDATE uploads SET cleared_at = %(now)s
WHERE id = %(id)s AND status <> 'pending' AND cleared_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM upload_parts WHERE upload_id = %(id)s)
"""
"""A finished upload with no part rows left holds no blobs: out of the sweep's index."""


async def insert(
    conn: Conn,
    *,
    upload_id: str,
    owner_id: str,
    filename: str,
    purpose: str,
    size: int,
    mime_type: str,
    file_expires_seconds: int,
    created_at: datetime,
    expires_at: datetime,
    project_id: str = DEFAULT_PROJECT_ID,
) -> UploadRecord:
    cur = await conn.execute(
        INSERT,
        {
            "id": upload_id,
            "owner": owner_id,
            "project": project_id,
            "filename": filename,
            "purpose": purpose,
            "bytes": size,
            "mime_type": mime_type,
            "file_expires": file_expires_seconds,
            "created": created_at,
            "expires": expires_at,
        },
    )
    row = await cur.fetchone()
    assert row is not None
    return UploadRecord.from_row(row)


async def get(
    conn: Conn, upload_id: str, project_id: str | None, *, lock: bool = False
) -> UploadRecord | None:
    """The upload (see :data:`GET`); with ``lock``, its row is locked ``FOR NO KEY
    UPDATE`` until the transaction ends, so no status change races the caller."""
    cur = await conn.execute(
        GET + (" FOR NO KEY UPDATE" if lock else ""), {"id": upload_id, "project": project_id}
    )
    row = await cur.fetchone()
    return UploadRecord.from_row(row) if row else None


async def received_bytes(conn: Conn, upload_id: str) -> int:
    row = await (await conn.execute(RECEIVED_BYTES, (upload_id,))).fetchone()
    return int(row["n"]) if row else 0


async def add_part(
    conn: Conn, *, part_id: str, upload_id: str, blob_key: str, created_at: datetime
) -> UploadPartRecord:
    cur = await conn.execute(
        ADD_PART, {"id": part_id, "upload": upload_id, "key": blob_key, "created": created_at}
    )
    row = await cur.fetchone()
    assert row is not None
    return UploadPartRecord.from_row(row)


async def finish_part(conn: Conn, part_id: str, size: int) -> UploadPartRecord | None:
    """The part, now received; None if its row is gone (the upload was cleared)."""
    row = await (await conn.execute(FINISH_PART, {"id": part_id, "bytes": size})).fetchone()
    return UploadPartRecord.from_row(row) if row else None


async def drop_part(conn: Conn, part_id: str) -> None:
    await conn.execute(DROP_PART, (part_id,))


async def parts(conn: Conn, upload_id: str, part_ids: Sequence[str]) -> list[UploadPartRecord]:
    cur = await conn.execute(PARTS, {"upload": upload_id, "ids": list(part_ids)})
    return [UploadPartRecord.from_row(r) for r in await cur.fetchall()]


async def all_parts(conn: Conn, upload_id: str) -> list[UploadPartRecord]:
    cur = await conn.execute(ALL_PARTS, (upload_id,))
    return [UploadPartRecord.from_row(r) for r in await cur.fetchall()]


async def claim_completion(
    conn: Conn, upload_id: str, token: str, now: datetime, lease: timedelta
) -> UploadRecord | None:
    """The upload, claimed for ``token``; None if it is not pending, has expired, or a
    live claim holds it."""
    cur = await conn.execute(
        CLAIM_COMPLETION, {"id": upload_id, "token": token, "now": now, "lease": lease}
    )
    row = await cur.fetchone()
    return UploadRecord.from_row(row) if row else None


async def release_completion(conn: Conn, upload_id: str, token: str) -> bool:
    cur = await conn.execute(RELEASE_COMPLETION, {"id": upload_id, "token": token})
    return cur.rowcount == 1


async def mark_completed(
    conn: Conn, upload_id: str, token: str, file_id: str, now: datetime
) -> UploadRecord | None:
    """The upload, completed with ``file_id``; None if ``token`` no longer holds it."""
    cur = await conn.execute(
        MARK_COMPLETED, {"id": upload_id, "token": token, "file": file_id, "now": now}
    )
    row = await cur.fetchone()
    return UploadRecord.from_row(row) if row else None


async def cancel(
    conn: Conn, upload_id: str, now: datetime, lease: timedelta
) -> UploadRecord | None:
    """The upload, cancelled; None if it was not pending, had expired or is being
    composed."""
    cur = await conn.execute(CANCEL, {"id": upload_id, "now": now, "lease": lease})
    row = await cur.fetchone()
    return UploadRecord.from_row(row) if row else None


async def expire_due(conn: Conn, now: datetime, lease: timedelta, limit: int) -> list[str]:
    """Expire up to ``limit`` due uploads; returns their ids."""
    cur = await conn.execute(EXPIRE_DUE, {"now": now, "lease": lease, "limit": limit})
    return [str(r["id"]) for r in await cur.fetchall()]


async def uncleared(conn: Conn, limit: int) -> list[str]:
    cur = await conn.execute(UNCLEARED, (limit,))
    return [str(r["id"]) for r in await cur.fetchall()]


async def clear(conn: Conn, upload_id: str, part_ids: Sequence[str], now: datetime) -> bool:
    """Forget the named parts of a finished upload (their blobs are gone) and, if none
    is left, mark it cleared. Returns whether it is cleared."""
    await conn.execute(DROP_PARTS, (upload_id, list(part_ids)))
    cur = await conn.execute(MARK_CLEARED, {"id": upload_id, "now": now})
    return cur.rowcount == 1
