"""Request counters that move as requests settle, never by recounting.

Every statement that settles, re-queues or escalates requests appends its changes to
``request_deltas`` in the same statement (see :func:`append_deltas`): one row per (batch,
pool, status) it touched. :func:`fold` adds them to the batch rows (request counts,
cancelled and expired counts, tokens, dedup and escalation counts, GPU time and its cost;
it lowers what the batch holds of its project's quotas, see :mod:`inferbatch.services.quotas`)
and to ``request_totals`` (requests ever settled by status and pool), appends them per day,
project, owner, model and pool to ``usage_deltas``, then deletes them; :func:`fold_usage` adds
those to ``usage_daily``. A fold reads only the deltas written since the last one, so its
cost follows the work done meanwhile, not the history.

GPU time: a delta carries the GPU-seconds its statement spent, split by the pool of the
worker that spent them (``spot_gpu_seconds``, ``dedicated_gpu_seconds``), and those that
deduplication saved (``dedup_gpu_seconds``: a copy's origin's time). The fold prices them
at the :class:`~inferbatch.pricing.PriceTable` it is given, so a cost is fixed when it is
folded (see :mod:`inferbatch.pricing`).

Appending rather than updating the batch row in the worker's statement keeps workers that
finish requests of one batch from queueing on that row's lock. A fold takes the lock of
each batch it updates first (skipping batches locked by a finisher or a retry, which fold
their own), so the batch row lock orders folds with finishing a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from inferbatch.db.types import Conn
from inferbatch.pricing import DEFAULT_PRICES, PriceTable

SETTLED_STATUSES = ("completed", "failed", "cancelled", "expired")
"""Statuses a request ends in (it may still be re-queued from ``failed``)."""


_DELTA_COLUMNS = """batch_id, pool, status, n, input_tokens, output_tokens, cached_tokens,
    reasoning_tokens, deduplicated, dedup_tokens, escalated"""
_GPU_COLUMNS = "model, spot_gpu_seconds, dedicated_gpu_seconds, dedup_gpu_seconds"


def append_deltas(source: str, *, gpu: bool = False) -> str:
    """A data-modifying CTE (to follow ``WITH``/``,``) that appends the rows of the CTE
    ``source`` to ``request_deltas``. ``source`` has the columns ``batch_id``, ``pool``,
    ``status``, ``n`` (signed), ``input_tokens``, ``output_tokens``, ``cached_tokens``,
    ``reasoning_tokens``, ``deduplicated``, ``dedup_tokens`` and ``escalated``, already
    grouped; with ``gpu`` also ``model``, ``spot_gpu_seconds``, ``dedicated_gpu_seconds``
    and ``dedup_gpu_seconds``."""
    columns = f"{_DELTA_COLUMNS}, {_GPU_COLUMNS}" if gpu else _DELTA_COLUMNS
    spent = (
        " OR spot_gpu_seconds <> 0 OR dedicated_gpu_seconds <> 0 OR dedup_gpu_seconds <> 0"
        if gpu
        else ""
    )
    return f"""
    counted AS (
        INSERT INTO request_deltas ({columns})
        SELECT {columns}
        FROM {source}
        WHERE n <> 0 OR escalated <> 0{spent}
    )"""


def gpu_pool_of(owner: str, pool: str) -> str:
    """SQL for the pool whose GPUs worker ``owner`` runs on (both SQL expressions): its
    ``workers`` row says (a dedicated worker may run spot-pool requests); a writer that
    never registered counts as the request's own ``pool``."""
    return f"coalesce((SELECT wk.pool FROM workers wk WHERE wk.id = {owner}), {pool})"


def settled_deltas(rows: str) -> str:
    """A CTE ``deltas`` grouping the settled rows of CTE ``rows`` (columns ``batch_id``,
    ``pool``, ``status``, ``dedup_of``, ``prompt_tokens``, ``completion_tokens``,
    ``cached_tokens``, ``reasoning_tokens``, ``model``, ``gpu_pool`` with
    ``spent_gpu_seconds``: the GPU time this statement's attempts spent and on which pool,
    and ``gpu_seconds``: a deduplicated copy's saved time), followed by
    :func:`append_deltas` of it."""
    return f"""
    deltas AS (
        SELECT batch_id, pool, status, model, count(*)::int AS n,
            coalesce(sum(prompt_tokens), 0)::bigint AS input_tokens,
            coalesce(sum(completion_tokens), 0)::bigint AS output_tokens,
            coalesce(sum(cached_tokens), 0)::bigint AS cached_tokens,
            coalesce(sum(reasoning_tokens), 0)::bigint AS reasoning_tokens,
            count(*) FILTER (WHERE status = 'completed' AND dedup_of IS NOT NULL)::int
                AS deduplicated,
            coalesce(sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0))
                FILTER (WHERE status = 'completed' AND dedup_of IS NOT NULL), 0)::bigint
                AS dedup_tokens,
            0 AS escalated,
            coalesce(sum(spent_gpu_seconds) FILTER (WHERE gpu_pool = 'spot'), 0)
                AS spot_gpu_seconds,
            coalesce(sum(spent_gpu_seconds) FILTER (WHERE gpu_pool = 'dedicated'), 0)
                AS dedicated_gpu_seconds,
            coalesce(sum(gpu_seconds)
                FILTER (WHERE status = 'completed' AND dedup_of IS NOT NULL), 0)
                AS dedup_gpu_seconds
        FROM {rows} GROUP BY batch_id, pool, status, model
    ),
    {append_deltas("deltas", gpu=True)}"""


_FOLD = """
WITH locked AS (
    SELECT id FROM batches WHERE id = ANY(%(batches)s::text[]) ORDER BY id
    FOR UPDATE SKIP LOCKED
), d AS (
    DELETE FROM request_deltas WHERE batch_id IN (SELECT id FROM locked)
    RETURNING batch_id, pool, status, n, input_tokens, output_tokens, cached_tokens,
        reasoning_tokens, deduplicated, dedup_tokens, escalated, model, spot_gpu_seconds,
        dedicated_gpu_seconds, dedup_gpu_seconds, at
), price AS (
    SELECT * FROM json_to_recordset(%(prices)s::json)
        AS p(model text, spot float8, dedicated float8)
), priced AS (
    -- each delta's GPU time at the prices in force now (per GPU-hour): fixed from here on.
    -- The owner by key from the batch row (a join of two CTEs has no estimate and may
    -- become a nested loop over both).
    SELECT d.*, b.owner_id, b.project_id,
        (d.spot_gpu_seconds * coalesce(pm.spot, pd.spot) / 3600)::numeric AS spot_cost,
        (d.dedicated_gpu_seconds * coalesce(pm.dedicated, pd.dedicated) / 3600)::numeric
            AS dedicated_cost,
        (d.dedup_gpu_seconds * coalesce(pm.dedicated, pd.dedicated) / 3600)::numeric
            AS dedup_cost,
        coalesce(pm.dedicated, pd.dedicated) / 3600 AS dedicated_rate
    FROM d JOIN batches b ON b.id = d.batch_id
    CROSS JOIN (SELECT spot, dedicated FROM price WHERE model IS NULL) pd
    LEFT JOIN price pm ON pm.model = d.model
), per_batch AS (
    SELECT batch_id,
        coalesce(sum(n) FILTER (WHERE status = 'completed'), 0) AS completed,
        coalesce(sum(n) FILTER (WHERE status = 'failed'), 0) AS failed,
        coalesce(sum(n) FILTER (WHERE status = 'cancelled'), 0) AS cancelled,
        coalesce(sum(n) FILTER (WHERE status = 'expired'), 0) AS expired,
        sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
        sum(cached_tokens) AS cached_tokens, sum(reasoning_tokens) AS reasoning_tokens,
        sum(deduplicated) AS deduplicated, sum(dedup_tokens) AS dedup_tokens,
        sum(escalated) AS escalated,
        sum(spot_gpu_seconds) AS spot_gpu, sum(dedicated_gpu_seconds) AS dedicated_gpu,
        sum(dedup_gpu_seconds) AS dedup_gpu,
        sum(spot_cost + dedicated_cost) AS cost, sum(dedup_cost) AS dedup_cost,
        sum(((spot_gpu_seconds + dedicated_gpu_seconds + dedup_gpu_seconds)
            * dedicated_rate)::numeric) AS all_dedicated
    FROM priced GROUP BY batch_id
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
        escalated_count = b.escalated_count + p.escalated,
        spot_gpu_seconds = b.spot_gpu_seconds + p.spot_gpu,
        dedicated_gpu_seconds = b.dedicated_gpu_seconds + p.dedicated_gpu,
        dedup_saved_gpu_seconds = b.dedup_saved_gpu_seconds + p.dedup_gpu,
        gpu_cost = b.gpu_cost + p.cost,
        dedup_saved_cost = b.dedup_saved_cost + p.dedup_cost,
        all_dedicated_cost = b.all_dedicated_cost + p.all_dedicated,
        cost_currency = CASE WHEN p.spot_gpu + p.dedicated_gpu + p.dedup_gpu > 0
            THEN %(currency)s ELSE b.cost_currency END,
        -- what the batch holds of its project's quotas goes down as requests settle, its
        -- tokens in proportion (a re-queued failure is not held again)
        quota_requests = b.quota_requests - least(b.quota_requests, p.settled),
        quota_tokens = CASE WHEN p.settled >= b.quota_requests THEN 0
            ELSE b.quota_tokens - (b.quota_tokens::numeric * p.settled / b.quota_requests)::bigint
            END
    FROM (SELECT *, greatest(0, completed + failed + cancelled + expired) AS settled
          FROM per_batch) p
    WHERE b.id = p.batch_id
    RETURNING b.id
), totals AS (
    INSERT INTO request_totals AS t (status, pool, n)
    SELECT status, pool, sum(n) FROM d GROUP BY status, pool
    ON CONFLICT (status, pool) DO UPDATE SET n = t.n + EXCLUDED.n
), usage AS (
    -- Per UTC day of the work, owner, model and the pool the GPU time was spent on:
    -- requests and tokens count on the pool the request settled in. Only deltas of
    -- settling statements carry a model: a failed request run again does not take the
    -- day's usage back (its first run was work done, as the GPU time it spent was).
    INSERT INTO usage_deltas (day, project_id, owner_id, model, pool, currency, requests,
        deduplicated, input_tokens, output_tokens, gpu_seconds, dedup_saved_gpu_seconds, cost,
        dedup_saved_cost, all_dedicated_cost)
    SELECT day, project_id, owner_id, model, pool, %(currency)s, sum(requests), sum(deduplicated),
        sum(input_tokens), sum(output_tokens), sum(gpu), sum(dedup_gpu), sum(cost),
        sum(dedup_cost), sum(((gpu + dedup_gpu) * dedicated_rate)::numeric)
    FROM (
        SELECT (p.at AT TIME ZONE 'UTC')::date AS day, p.project_id, p.owner_id, p.model,
            g.pool,
            CASE WHEN p.pool = g.pool AND p.status IN ('completed', 'failed')
                THEN p.n ELSE 0 END AS requests,
            CASE WHEN p.pool = g.pool THEN p.deduplicated ELSE 0 END AS deduplicated,
            CASE WHEN p.pool = g.pool THEN p.input_tokens ELSE 0 END AS input_tokens,
            CASE WHEN p.pool = g.pool THEN p.output_tokens ELSE 0 END AS output_tokens,
            g.gpu, CASE WHEN p.pool = g.pool THEN p.dedup_gpu_seconds ELSE 0 END AS dedup_gpu,
            g.cost, CASE WHEN p.pool = g.pool THEN p.dedup_cost ELSE 0 END AS dedup_cost,
            p.dedicated_rate
        FROM priced p CROSS JOIN LATERAL (VALUES
            ('spot', p.spot_gpu_seconds, p.spot_cost),
            ('dedicated', p.dedicated_gpu_seconds, p.dedicated_cost)) AS g(pool, gpu, cost)
        WHERE p.model IS NOT NULL
    ) u
    GROUP BY day, project_id, owner_id, model, pool
    HAVING sum(requests) <> 0 OR sum(deduplicated) <> 0 OR sum(input_tokens) <> 0
        OR sum(output_tokens) <> 0 OR sum(gpu) <> 0 OR sum(dedup_gpu) <> 0
)
SELECT (SELECT count(*) FROM d)::int AS deltas, (SELECT count(*) FROM folded)::int AS batches
"""


async def pending_batches(conn: Conn, limit: int = 1000) -> list[str]:
    """Batches with deltas not folded yet (reads only the unfolded deltas)."""
    cur = await conn.execute(
        "SELECT DISTINCT batch_id FROM request_deltas LIMIT %s", (limit,), prepare=False
    )
    return [r["batch_id"] for r in await cur.fetchall()]


async def fold(conn: Conn, batch_ids: Sequence[str], prices: PriceTable | None = None) -> int:
    """Fold the deltas of ``batch_ids`` into their batch rows, the totals and the usage
    deltas, their GPU time priced at ``prices`` (default: the default settings' prices);
    returns how many deltas were folded. Batches whose row another transaction holds are
    skipped (a finisher folds its own batch under that lock)."""
    if not batch_ids:
        return 0
    table = prices or DEFAULT_PRICES
    cur = await conn.execute(
        _FOLD,
        {
            "batches": list(batch_ids),
            "prices": orjson.dumps(table.as_rows()).decode(),
            "currency": table.currency,
        },
    )
    row = await cur.fetchone()
    return int(row["deltas"]) if row else 0


_FOLD_USAGE = """
WITH d AS (
    DELETE FROM usage_deltas
    RETURNING day, project_id, owner_id, model, pool, currency, requests, deduplicated,
        input_tokens, output_tokens, gpu_seconds, dedup_saved_gpu_seconds, cost,
        dedup_saved_cost, all_dedicated_cost
), folded AS (
    INSERT INTO usage_daily AS u (day, project_id, owner_id, model, pool, currency, requests,
        deduplicated, input_tokens, output_tokens, gpu_seconds, dedup_saved_gpu_seconds, cost,
        dedup_saved_cost, all_dedicated_cost)
    SELECT day, project_id, owner_id, model, pool, currency, sum(requests), sum(deduplicated),
        sum(input_tokens), sum(output_tokens), sum(gpu_seconds), sum(dedup_saved_gpu_seconds),
        sum(cost), sum(dedup_saved_cost), sum(all_dedicated_cost)
    FROM d GROUP BY day, project_id, owner_id, model, pool, currency
    -- in key order: two folders (a leader handing over) never wait on each other in a cycle
    ORDER BY day, project_id, owner_id, model, pool, currency
    ON CONFLICT (day, project_id, owner_id, model, pool, currency) DO UPDATE SET
        requests = u.requests + EXCLUDED.requests,
        deduplicated = u.deduplicated + EXCLUDED.deduplicated,
        input_tokens = u.input_tokens + EXCLUDED.input_tokens,
        output_tokens = u.output_tokens + EXCLUDED.output_tokens,
        gpu_seconds = u.gpu_seconds + EXCLUDED.gpu_seconds,
        dedup_saved_gpu_seconds = u.dedup_saved_gpu_seconds + EXCLUDED.dedup_saved_gpu_seconds,
        cost = u.cost + EXCLUDED.cost,
        dedup_saved_cost = u.dedup_saved_cost + EXCLUDED.dedup_saved_cost,
        all_dedicated_cost = u.all_dedicated_cost + EXCLUDED.all_dedicated_cost
)
SELECT count(*)::int AS n FROM d
"""


async def fold_usage(conn: Conn) -> int:
    """Add the usage deltas appended by :func:`fold` to ``usage_daily`` (the leader, each
    tick); returns how many were folded. Reads only the deltas, a handful of rows."""
    cur = await conn.execute(_FOLD_USAGE)
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


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
