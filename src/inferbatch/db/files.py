"""File metadata rows. Contents live in the blob store under ``blob_key``."""

from __future__ import annotations

from datetime import datetime

from inferbatch.db.types import Conn
from inferbatch.domain import DEFAULT_PROJECT_ID, FileRecord

_COLUMNS = (
    "id, owner_id, purpose, filename, bytes, sha256, blob_key, created_at, expires_at, "
    "line_count, project_id, token_estimate"
)
_VISIBLE = "(%(project)s::text IS NULL OR project_id = %(project)s)"
"""The row is of the project (any project's when it is None: admins)."""


async def insert(
    conn: Conn,
    *,
    file_id: str,
    owner_id: str,
    purpose: str,
    filename: str,
    size: int,
    sha256: str,
    blob_key: str,
    expires_at: datetime | None,
    line_count: int | None = None,
    project_id: str = DEFAULT_PROJECT_ID,
    token_estimate: int | None = None,
) -> FileRecord:
    """Record a stored file of ``project_id``, made by ``owner_id``; ``line_count`` and
    ``token_estimate`` when its lines were counted on the way in."""
    cur = await conn.execute(
        f"""
        INSERT INTO files (id, owner_id, purpose, filename, bytes, sha256, blob_key, expires_at,
            line_count, project_id, token_estimate)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}
        """,
        (
            file_id,
            owner_id,
            purpose,
            filename,
            size,
            sha256,
            blob_key,
            expires_at,
            line_count,
            project_id,
            token_estimate,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    return FileRecord.from_row(row)


async def get(conn: Conn, file_id: str, project_id: str | None) -> FileRecord | None:
    """The file, if it exists and (unless ``project_id`` is None) is of ``project_id``."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM files WHERE id = %(id)s AND {_VISIBLE}",
        {"id": file_id, "project": project_id},
    )
    row = await cur.fetchone()
    return FileRecord.from_row(row) if row else None


async def list_page(
    conn: Conn,
    project_id: str | None,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    ascending: bool,
) -> list[FileRecord]:
    """Up to ``limit`` + 1 files ordered by creation time, starting after the cursor id."""
    op, direction = (">", "ASC") if ascending else ("<", "DESC")
    cur = await conn.execute(
        f"""
        SELECT {_COLUMNS} FROM files
        WHERE {_VISIBLE}
          AND (%(purpose)s::text IS NULL OR purpose = %(purpose)s)
          AND (%(after)s::text IS NULL OR (created_at, id) {op}
               (SELECT created_at, id FROM files WHERE id = %(after)s))
        ORDER BY created_at {direction}, id {direction}
        LIMIT %(limit)s
        """,
        {"project": project_id, "purpose": purpose, "after": after, "limit": limit + 1},
    )
    return [FileRecord.from_row(r) for r in await cur.fetchall()]


async def delete(conn: Conn, file_id: str, project_id: str | None) -> FileRecord | None:
    """Delete the row (if of ``project_id``, unless None); returns what was deleted (for
    the blob) or None."""
    cur = await conn.execute(
        f"DELETE FROM files WHERE id = %(id)s AND {_VISIBLE} RETURNING {_COLUMNS}",
        {"id": file_id, "project": project_id},
    )
    row = await cur.fetchone()
    return FileRecord.from_row(row) if row else None


async def delete_many(conn: Conn, file_ids: list[str]) -> int:
    """Delete these rows (whatever their owner); returns how many were deleted."""
    cur = await conn.execute("DELETE FROM files WHERE id = ANY(%s)", (file_ids,))
    return cur.rowcount


async def expired(conn: Conn, now: datetime, limit: int) -> list[FileRecord]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM files WHERE expires_at < %s ORDER BY expires_at LIMIT %s",
        (now, limit),
    )
    return [FileRecord.from_row(r) for r in await cur.fetchall()]
