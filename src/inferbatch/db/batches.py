"""Batch rows and their status transitions. Every transition is conditional on the status
it leaves and returns whether it happened."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from inferbatch.db import webhooks
from inferbatch.db.types import Conn
from inferbatch.domain import DEFAULT_PROJECT_ID, BatchRecord

_COLUMNS = ", ".join(BatchRecord.__slots__)
_VISIBLE = "(%(project)s::text IS NULL OR project_id = %(project)s)"
"""The row is of the project (any project's when it is None: admins)."""


async def insert(
    conn: Conn,
    *,
    batch_id: str,
    owner_id: str,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    deadline_at: datetime,
    created_at: datetime,
    priority: int,
    dedup_scope: str,
    metadata: dict[str, str] | None,
    output_expires_seconds: int | None,
    callback_url: str | None = None,
    callback_secret: str | None = None,
    estimated_completion_at: datetime | None = None,
    warnings: list[dict[str, Any]] | None = None,
    project_id: str = DEFAULT_PROJECT_ID,
    quota_requests: int = 0,
    quota_tokens: int = 0,
) -> BatchRecord:
    """Insert a ``validating`` batch holding ``quota_requests`` requests and
    ``quota_tokens`` tokens of its project's quotas (the usage trigger counts them)."""
    cur = await conn.execute(
        f"""
        INSERT INTO batches (id, owner_id, input_file_id, endpoint, completion_window,
            deadline_at, created_at, priority, dedup_scope, metadata, output_expires_seconds,
            callback_url, callback_secret, estimated_completion_at, warnings, project_id,
            quota_requests, quota_tokens, status)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
            'validating')
        RETURNING {_COLUMNS}
        """,
        (
            batch_id,
            owner_id,
            input_file_id,
            endpoint,
            completion_window,
            deadline_at,
            created_at,
            priority,
            dedup_scope,
            Jsonb(metadata) if metadata is not None else None,
            output_expires_seconds,
            callback_url,
            callback_secret,
            estimated_completion_at,
            Jsonb(warnings) if warnings else None,
            project_id,
            quota_requests,
            quota_tokens,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    await add_event(conn, batch_id, "validating", "batch created")
    return BatchRecord.from_row(row)


async def get(conn: Conn, batch_id: str, project_id: str | None) -> BatchRecord | None:
    """The batch, if it exists and (unless ``project_id`` is None) is of ``project_id``."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM batches WHERE id = %(id)s AND {_VISIBLE}",
        {"id": batch_id, "project": project_id},
    )
    row = await cur.fetchone()
    return BatchRecord.from_row(row) if row else None


async def list_page(
    conn: Conn,
    project_id: str | None,
    *,
    after: str | None,
    limit: int,
    priority: int | None = None,
) -> list[BatchRecord]:
    """Up to ``limit`` + 1 batches, newest first, starting after the cursor id; only those
    of exactly ``priority`` when it is given."""
    cur = await conn.execute(
        f"""
        SELECT {_COLUMNS} FROM batches
        WHERE {_VISIBLE}
          AND (%(priority)s::int IS NULL OR priority = %(priority)s)
          AND (%(after)s::text IS NULL OR (created_at, id) <
               (SELECT created_at, id FROM batches WHERE id = %(after)s))
        ORDER BY created_at DESC, id DESC
        LIMIT %(limit)s
        """,
        {"project": project_id, "after": after, "limit": limit + 1, "priority": priority},
    )
    return [BatchRecord.from_row(r) for r in await cur.fetchall()]


async def unfinished_work(conn: Conn, min_priority: int) -> list[dict[str, Any]]:
    """Validating and in-progress batches of ``min_priority`` or more with their unsettled
    requests, from the folded counters (a tick behind at most) or, before ingest, the input
    file's line count: one row per batch, no request read (admission at create)."""
    cur = await conn.execute(
        """
        SELECT b.id, b.model, b.priority,
            extract(epoch FROM b.created_at)::float8 AS created_at,
            extract(epoch FROM b.deadline_at)::float8 AS deadline_at,
            CASE WHEN b.ingested_at IS NULL THEN coalesce(f.line_count, 0)
                ELSE greatest(0, b.total_count - b.completed_count - b.failed_count
                    - b.cancelled_count - b.expired_count) END AS unsettled
        FROM batches b
        LEFT JOIN files f ON f.id = b.input_file_id AND b.ingested_at IS NULL
        WHERE b.status IN ('validating', 'in_progress') AND b.priority >= %s
        """,
        (min_priority,),
    )
    return await cur.fetchall()


async def request_cancel(conn: Conn, batch_id: str, now: datetime) -> bool:
    """validating|in_progress -> cancelling. False if the batch is in another state."""
    cur = await conn.execute(
        """
        UPDATE batches SET status = 'cancelling', cancelling_at = %s
        WHERE id = %s AND status IN ('validating', 'in_progress')
        """,
        (now, batch_id),
    )
    if cur.rowcount == 1:
        await add_event(conn, batch_id, "cancelling", "cancel requested")
    return cur.rowcount == 1


async def next_to_ingest(conn: Conn) -> BatchRecord | None:
    """The oldest batch whose input has not been read yet, locked for this transaction."""
    cur = await conn.execute(
        f"""
        SELECT {_COLUMNS} FROM batches
        WHERE status IN ('validating', 'cancelling') AND ingested_at IS NULL
        ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED
        """
    )
    row = await cur.fetchone()
    return BatchRecord.from_row(row) if row else None


async def mark_ingested(
    conn: Conn, batch_id: str, *, total: int, model: str | None, now: datetime
) -> bool:
    """Record a valid input: validating -> in_progress (a cancelling batch stays so). The
    batch holds its real number of requests of its project's quota from here on (the line
    count at create counted blank lines too, and a file without one counted none)."""
    cur = await conn.execute(
        """
        UPDATE batches SET ingested_at = %(now)s, total_count = %(total)s, model = %(model)s,
            quota_requests = %(total)s,
            in_progress_at = CASE WHEN status = 'validating' THEN %(now)s END,
            status = CASE WHEN status = 'validating' THEN 'in_progress' ELSE status END
        WHERE id = %(id)s AND ingested_at IS NULL
        RETURNING status
        """,
        {"id": batch_id, "total": total, "model": model, "now": now},
    )
    row = await cur.fetchone()
    if row is not None and row["status"] == "in_progress":
        await add_event(conn, batch_id, "in_progress", f"{total} requests queued")
    return row is not None


async def mark_invalid(
    conn: Conn, batch_id: str, errors: list[dict[str, Any]], now: datetime
) -> bool:
    """validating|cancelling (not yet ingested) -> failed, with OpenAI-style error entries;
    queues the ``batch.failed`` webhook event in the same transaction."""
    cur = await conn.execute(
        """
        UPDATE batches SET status = 'failed', failed_at = %s, errors = %s, ingested_at = %s
        WHERE id = %s AND ingested_at IS NULL AND status IN ('validating', 'cancelling')
        """,
        (now, Jsonb(errors), now, batch_id),
    )
    if cur.rowcount == 1:
        await add_event(conn, batch_id, "failed", errors[0]["message"] if errors else None)
        await webhooks.enqueue_batch_event(conn, batch_id, "failed", now)
    return cur.rowcount == 1


async def ready_to_finish(conn: Conn, now: datetime) -> list[tuple[str, str]]:
    """(batch id, terminal status) for batches that can be finished now: all requests
    settled (``completed``), past the deadline with work left (``expired``), or cancelling
    with nothing queued or running any more (``cancelled``)."""
    cur = await conn.execute(
        """
        SELECT b.id, CASE
            WHEN b.status = 'cancelling' THEN 'cancelled'
            WHEN NOT b.unsettled THEN 'completed'
            ELSE 'expired' END AS outcome
        FROM (
            SELECT id, status, deadline_at, created_at, EXISTS (
                SELECT 1 FROM requests r WHERE r.batch_id = batches.id
                  AND r.status IN ('queued', 'running', 'waiting')) AS unsettled
            FROM batches
            WHERE ingested_at IS NOT NULL
              AND status IN ('in_progress', 'cancelling', 'finalizing')
        ) b
        WHERE NOT b.unsettled OR (b.status <> 'cancelling' AND b.deadline_at <= %(now)s)
        ORDER BY b.created_at
        """,
        {"now": now},
    )
    return [(r["id"], r["outcome"]) for r in await cur.fetchall()]


async def lock_for_finish(conn: Conn, batch_id: str) -> BatchRecord | None:
    cur = await conn.execute(
        f"""
        SELECT {_COLUMNS} FROM batches WHERE id = %s
          AND status IN ('in_progress', 'cancelling', 'finalizing') FOR UPDATE
        """,
        (batch_id,),
    )
    row = await cur.fetchone()
    return BatchRecord.from_row(row) if row else None


async def mark_finalizing(conn: Conn, batch_id: str, now: datetime) -> bool:
    cur = await conn.execute(
        """
        UPDATE batches SET status = 'finalizing', finalizing_at = %s
        WHERE id = %s AND status = 'in_progress'
        """,
        (now, batch_id),
    )
    if cur.rowcount == 1:
        await add_event(conn, batch_id, "finalizing", None)
    return cur.rowcount == 1


async def mark_finished(
    conn: Conn,
    batch_id: str,
    *,
    status: str,
    now: datetime,
    output_file_id: str | None,
    error_file_id: str | None,
    counts: tuple[int, int, int],
    tokens: tuple[int, int, int, int],
    deduplicated: tuple[int, int] = (0, 0),
) -> bool:
    """in_progress|finalizing|cancelling -> completed|expired|cancelled with final counts;
    ``tokens``: input, output, cached input and reasoning output tokens. Queues the
    ``batch.<status>`` webhook event in the same transaction."""
    stamp = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[
        status
    ]
    cur = await conn.execute(
        f"""
        UPDATE batches SET status = %(status)s, {stamp} = %(now)s,
            output_file_id = %(out)s, error_file_id = %(err)s,
            total_count = %(total)s, completed_count = %(completed)s, failed_count = %(failed)s,
            input_tokens = %(inp)s, output_tokens = %(outp)s,
            cached_tokens = %(cached)s, reasoning_tokens = %(reasoning)s,
            deduplicated_count = %(dedup)s, dedup_tokens_saved = %(saved)s
        WHERE id = %(id)s AND status IN ('in_progress', 'finalizing', 'cancelling')
        """,
        {
            "status": status,
            "now": now,
            "out": output_file_id,
            "err": error_file_id,
            "total": counts[0],
            "completed": counts[1],
            "failed": counts[2],
            "inp": tokens[0],
            "outp": tokens[1],
            "cached": tokens[2],
            "reasoning": tokens[3],
            "dedup": deduplicated[0],
            "saved": deduplicated[1],
            "id": batch_id,
        },
    )
    if cur.rowcount == 1:
        await add_event(conn, batch_id, status, None)
        await webhooks.enqueue_batch_event(conn, batch_id, status, now)
    return cur.rowcount == 1


async def add_event(conn: Conn, batch_id: str, status: str, message: str | None) -> None:
    await conn.execute(
        "INSERT INTO batch_events (batch_id, status, message) VALUES (%s, %s, %s)",
        (batch_id, status, message),
    )


async def events(conn: Conn, batch_id: str) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT status, message, created_at FROM batch_events WHERE batch_id = %s ORDER BY id",
        (batch_id,),
    )
    return await cur.fetchall()


async def lock(conn: Conn, batch_id: str) -> BatchRecord | None:
    """The batch row, locked until the transaction ends (serialises re-runs with the
    finalizer)."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM batches WHERE id = %s FOR UPDATE", (batch_id,)
    )
    row = await cur.fetchone()
    return BatchRecord.from_row(row) if row else None


async def has_unsettled(conn: Conn, batch_id: str) -> bool:
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM requests WHERE batch_id = %s "
        "AND status IN ('queued', 'running', 'waiting')) AS any",
        (batch_id,),
    )
    row = await cur.fetchone()
    return bool(row and row["any"])


async def unfinalize(conn: Conn, batch_id: str) -> bool:
    """finalizing -> in_progress: requests were sent back to the queue meanwhile."""
    cur = await conn.execute(
        """
        UPDATE batches SET status = 'in_progress', finalizing_at = NULL
        WHERE id = %s AND status = 'finalizing'
        """,
        (batch_id,),
    )
    return cur.rowcount == 1


async def reopen(conn: Conn, batch_id: str, now: datetime) -> bool:
    """completed -> in_progress, so re-queued requests get processed and the output
    files are written again. Refused once the deadline has passed."""
    cur = await conn.execute(
        """
        UPDATE batches SET status = 'in_progress', finalizing_at = NULL, completed_at = NULL,
            output_file_id = NULL, error_file_id = NULL
        WHERE id = %s AND status = 'completed' AND deadline_at > %s
        """,
        (batch_id, now),
    )
    if cur.rowcount == 1:
        await add_event(conn, batch_id, "in_progress", "failed requests sent back to the queue")
    return cur.rowcount == 1
