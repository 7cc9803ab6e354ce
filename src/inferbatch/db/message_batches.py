"""Statements of the Message Batches API (``/v1/messages/batches``) on the ``batches``
table: its batches are the rows of endpoint ``/v1/messages``.

The endpoint is written into each statement as a literal, not a parameter, so that the
planner uses the partial indexes on those rows (``batches_messages_project_created``,
``batches_messages_created``) for every plan, generic ones included.
"""

from __future__ import annotations

from inferbatch.db.types import Conn
from inferbatch.domain import MESSAGES_ENDPOINT, TERMINAL_BATCH_STATUSES, BatchRecord

_COLUMNS = ", ".join(BatchRecord.__slots__)
_MESSAGES = f"endpoint = '{MESSAGES_ENDPOINT}'"
_ENDED = tuple(sorted(TERMINAL_BATCH_STATUSES))


async def set_total(conn: Conn, batch_id: str, total: int) -> BatchRecord:
    """Record the number of requests of a batch just created (ingest counts them again):
    its ``processing`` count until it is ingested."""
    cur = await conn.execute(
        f"UPDATE batches SET total_count = %s WHERE id = %s AND ingested_at IS NULL "
        f"RETURNING {_COLUMNS}",
        (total, batch_id),
    )
    row = await cur.fetchone()
    assert row is not None, "set_total: the batch was created in this transaction"
    return BatchRecord.from_row(row)


async def get(conn: Conn, batch_id: str, project_id: str | None) -> BatchRecord | None:
    """The Message Batch, if it exists and (unless ``project_id`` is None) is of
    ``project_id``."""
    cur = await conn.execute(
        f"""
        SELECT {_COLUMNS} FROM batches
        WHERE id = %(id)s AND {_MESSAGES}
          AND (%(project)s::text IS NULL OR project_id = %(project)s)
        """,
        {"id": batch_id, "project": project_id},
    )
    row = await cur.fetchone()
    return BatchRecord.from_row(row) if row else None


async def list_page(
    conn: Conn,
    project_id: str | None,
    *,
    after_id: str | None,
    before_id: str | None,
    limit: int,
) -> list[BatchRecord]:
    """Up to ``limit`` + 1 Message Batches, newest first: those created just before the
    batch ``after_id`` (older), or just after the batch ``before_id`` (newer, the ones
    nearest to it), or the newest. An unknown cursor id gives an empty page."""
    params = {"project": project_id, "limit": limit + 1, "cursor": before_id or after_id}
    owner = "(%(project)s::text IS NULL OR project_id = %(project)s)"
    cursor = "(SELECT created_at, id FROM batches WHERE id = %(cursor)s)"
    if before_id is not None:
        cur = await conn.execute(
            f"""
            SELECT {_COLUMNS} FROM batches
            WHERE {_MESSAGES} AND {owner} AND (created_at, id) > {cursor}
            ORDER BY created_at ASC, id ASC LIMIT %(limit)s
            """,
            params,
        )
        return [BatchRecord.from_row(r) for r in reversed(await cur.fetchall())]
    where = f"AND (created_at, id) < {cursor}" if after_id is not None else ""
    cur = await conn.execute(
        f"""
        SELECT {_COLUMNS} FROM batches
        WHERE {_MESSAGES} AND {owner} {where}
        ORDER BY created_at DESC, id DESC LIMIT %(limit)s
        """,
        params,
    )
    return [BatchRecord.from_row(r) for r in await cur.fetchall()]


async def delete_ended(conn: Conn, batch_id: str) -> bool:
    """Delete an ended Message Batch and its request rows (inputs, queue rows and events
    go with the batch row; results and unfolded counter deltas are deleted here). False,
    and nothing deleted, when it is not ended or not there. Its files are the caller's."""
    cur = await conn.execute(
        f"DELETE FROM batches WHERE id = %s AND {_MESSAGES} AND status = ANY(%s)",
        (batch_id, list(_ENDED)),
    )
    if cur.rowcount != 1:
        return False
    await conn.execute("DELETE FROM request_results WHERE batch_id = %s", (batch_id,))
    await conn.execute("DELETE FROM request_deltas WHERE batch_id = %s", (batch_id,))
    return True
