"""Request counters that move as requests settle, never by recounting.

Every statement that settles, re-queues or escalates requests appends its changes to
``request_deltas`` in the same statement (see :func:`append_deltas`): one row per (batch,
pool, status) it touched. :func:`fold` adds them to the batch rows (request counts,
cancelled and expired counts, tokens, dedup and escalation counts) and to
``request_totals`` (requests ever settled by status and pool), then deletes them. A fold
reads only the deltas written since the last one, so its cost follows the work done
meanwhile, not the history.

Appending rather than updating the batch row in the worker's statement keeps workers that
finish requests of one batch from queueing on that row's lock. A fold takes the lock of
each batch it updates first (skipping batches locked by a finisher or a retry, which fold
their own), so the batch row lock orders folds with finishing a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inferbatch.db.types import Conn

SETTLED_STATUSES = ("completed", "failed", "cancelled", "expired")
"""Statuses a request ends in (it may still be re-queued from ``failed``)."""


def append_deltas(source: str) -> str:
    """A data-modifying CTE (to follow ``WITH``/``,``) that appends the rows of the CTE
    ``source`` to ``request_deltas``. ``source`` has the columns ``batch_id``, ``pool``,
    ``status``, ``n`` (signed), ``input_tokens``, ``output_tokens``, ``cached_tokens``,
    ``reasoning_tokens``, ``deduplicated``, ``dedup_tokens`` and ``escalated``, already
    grouped."""
    return f"""
    counted AS (
        INSERT INTO request_deltas (batch_id, pool, status, n, input_tokens, output_tokens,
            cached_tokens, reasoning_tokens, deduplicated, dedup_tokens, escalated)
        SELECT batch_id, pool, status, n, input_tokens, output_tokens, cached_tokens,
            reasoning_tokens, deduplicated, dedup_tokens, escalated
        FROM {source}
        WHERE n <> 0 OR escalated <> 0
    )"""


def settled_deltas(rows: str) -> str:
    """A CTE ``deltas`` grouping the settled rows of CTE ``rows`` (columns ``batch_id``,
    ``pool``, ``status``, ``dedup_of``, ``prompt_tokens``, ``completion_tokens``,
    ``cached_tokens``, ``reasoning_tokens``), followed by :func:`append_deltas` of it."""
    return f"""
    deltas AS (
        SELECT batch_id, pool, status, count(*)::int AS n,
            coalesce(sum(prompt_tokens), 0)::bigint AS input_tokens,
            coalesce(sum(completion_tokens), 0)::bigint AS output_tokens,
            coalesce(sum(cached_tokens), 0)::bigint AS cached_tokens,
            coalesce(sum(reasoning_tokens), 0)::bigint AS reasoning_tokens,
            count(*) FILTER (WHERE status = 'completed' AND dedup_of IS NOT NULL)::int
                AS deduplicated,
            coalesce(sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0))
                FILTER (WHERE status = 'completed' AND dedup_of IS NOT NULL), 0)::bigint
                AS dedup_tokens,
            0 AS escalated
        FROM {rows} GROUP BY batch_id, pool, status
    ),
    {append_deltas("deltas")}"""


_FOLD = """
WITH locked AS (
    SELECT id FROM batches WHERE id = ANY(%(batches)s::text[]) ORDER BY id
    FOR UPDATE SKIP LOCKED
), d AS (
    DELETE FROM request_deltas WHERE batch_id IN (SELECT id FROM locked)
    RETURNING batch_id, pool, status, n, input_tokens, output_tokens, cached_tokens,
        reasoning_tokens, deduplicated, dedup_tokens, escalated
), per_batch AS (
    SELECT batch_id,
        coalesce(sum(n) FILTER (WHERE status = 'completed'), 0) AS completed,
        coalesce(sum(n) FILTER (WHERE status = 'failed'), 0) AS failed,
        coalesce(sum(n) FILTER (WHERE status = 'cancelled'), 0) AS cancelled,
        coalesce(sum(n) FILTER (WHERE status = 'expired'), 0) AS expired,
        sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
        sum(cached_tokens) AS cached_tokens, sum(reasoning_tokens) AS reasoning_tokens,
        sum(deduplicated) AS deduplicated, sum(dedup_tokens) AS dedup_tokens,
        sum(escalated) AS escalated
    FROM d GROUP BY batch_id
), folded AS (
    UPDATE batches b SET
        completed_count = b.completed_count + p.completed,
        failed_count = b.failed_count + p.failed,
        cancelled_count = b.cancelled_count + p.cancelled,
        expired_count = b.expired_count + p.expired,
        input_tokens = b.input_tokens + p.input_tokens,
        output_tokens = b.output_tokens + p.output_tokens,
        cached_tokens = b.cached_tokens + p.cached_tokens,
        reasoning_tokens = b.reasoning_tokens + p.reasoning_tokens,
        deduplicated_count = b.deduplicated_count + p.deduplicated,
        dedup_tokens_saved = b.dedup_tokens_saved + p.dedup_tokens,
        escalated_count = b.escalated_count + p.escalated
    FROM per_batch p WHERE b.id = p.batch_id
    RETURNING b.id
), totals AS (
    INSERT INTO request_totals AS t (status, pool, n)
    SELECT status, pool, sum(n) FROM d GROUP BY status, pool
    ON CONFLICT (status, pool) DO UPDATE SET n = t.n + EXCLUDED.n
)
SELECT (SELECT count(*) FROM d)::int AS deltas, (SELECT count(*) FROM folded)::int AS batches
"""


async def pending_batches(conn: Conn, limit: int = 1000) -> list[str]:
    """Batches with deltas not folded yet (reads only the unfolded deltas)."""
    cur = await conn.execute(
        "SELECT DISTINCT batch_id FROM request_deltas LIMIT %s", (limit,), prepare=False
    )
    return [r["batch_id"] for r in await cur.fetchall()]


async def fold(conn: Conn, batch_ids: Sequence[str]) -> int:
    """Fold the deltas of ``batch_ids`` into their batch rows and the totals; returns how
    many deltas were folded. Batches whose row another transaction holds are skipped (a
    finisher folds its own batch under that lock)."""
    if not batch_ids:
        return 0
    cur = await conn.execute(_FOLD, {"batches": list(batch_ids)})
    row = await cur.fetchone()
    return int(row["deltas"]) if row else 0


async def fold_batch_totals(conn: Conn) -> int:
    """Fold the batch status changes appended by the ``batches`` trigger into
    ``batch_totals``; returns how many were folded."""
    cur = await conn.execute(
        """
        WITH d AS (
            DELETE FROM batch_total_deltas RETURNING status, batches, ingested_requests
        ), folded AS (
            INSERT INTO batch_totals AS t (status, batches, ingested_requests)
            SELECT status, sum(batches), sum(ingested_requests) FROM d GROUP BY status
            ON CONFLICT (status) DO UPDATE SET batches = t.batches + EXCLUDED.batches,
                ingested_requests = t.ingested_requests + EXCLUDED.ingested_requests
        )
        SELECT count(*)::int AS n FROM d
        """
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def request_totals(conn: Conn) -> list[dict[str, Any]]:
    """Requests ever settled, by status and pool (as of the last fold)."""
    cur = await conn.execute("SELECT status, pool, n FROM request_totals WHERE n <> 0")
    return await cur.fetchall()


async def batch_totals(conn: Conn) -> tuple[dict[str, int], int]:
    """(batches by status, requests ingested by all batches), as of the last fold plus the
    changes not folded yet (a handful of rows: both tables are small)."""
    cur = await conn.execute(
        """
        SELECT status, sum(batches)::bigint AS batches, sum(ingested_requests)::bigint AS ingested
        FROM (SELECT status, batches, ingested_requests FROM batch_totals
              UNION ALL SELECT status, batches, ingested_requests FROM batch_total_deltas) t
        GROUP BY status HAVING sum(batches) <> 0 OR sum(ingested_requests) <> 0
        """
    )
    rows = await cur.fetchall()
    return {r["status"]: int(r["batches"]) for r in rows}, sum(int(r["ingested"]) for r in rows)
