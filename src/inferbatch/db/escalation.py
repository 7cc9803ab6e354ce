"""Escalation statements: snapshots for the SLA policy, moving requests to the dedicated
pool with a recorded reason, and the scheduler's published state."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from inferbatch.db.requests import Requeue, notify_queued, requeue
from inferbatch.db.types import Conn

DESIRED_DEDICATED = "dedicated_workers_desired"
"""Published by the escalate duty: the autoscaler's target for dedicated workers."""
SPOT_ENABLED = "spot_workers_enabled"
"""Published by the escalate duty: 0 when the policy runs no spot workers at all."""
BATCHES_AT_RISK = "batches_at_risk"
"""Published by the escalate duty: batches the policy expects to miss their deadline."""
SERVICE_SECONDS = "service_seconds"
"""Published by the escalate duty: measured mean seconds a request holds a slot, by model
(``"*"``: over all models), only where enough finished (admission reads them at create)."""
EFFICIENCY = "throughput_efficiency"
"""Published by the escalate duty: measured slot-seconds delivered per slot-second of
capacity (``policy/eta.py`` ``ThroughputMeter``), or null while not measured enough."""


async def unfinished_batches(conn: Conn) -> list[dict[str, Any]]:
    """In-progress batches with their unsettled requests counted by status and pool (reads
    only unsettled rows, through their partial index), and their stored estimate."""
    cur = await conn.execute(
        """
        SELECT b.id, b.model, b.priority, extract(epoch FROM b.created_at)::float8 AS created_at,
            extract(epoch FROM b.deadline_at)::float8 AS deadline_at,
            extract(epoch FROM b.estimated_completion_at)::float8 AS estimated_completion_at,
            b.total_count - b.deduplicated_count AS total,
            count(*) FILTER (WHERE r.status = 'queued' AND r.pool = 'spot') AS queued_spot,
            count(*) FILTER (WHERE r.status = 'queued' AND r.pool = 'dedicated')
                AS queued_dedicated,
            count(*) FILTER (WHERE r.status = 'running' AND r.pool = 'spot') AS running_spot,
            count(*) FILTER (WHERE r.status = 'running' AND r.pool = 'dedicated')
                AS running_dedicated
        FROM batches b
        JOIN requests r ON r.batch_id = b.id AND r.status IN ('queued', 'running', 'waiting')
        WHERE b.status = 'in_progress'
        GROUP BY b.id
        """
    )
    return await cur.fetchall()


async def service_times(
    conn: Conn, sample: int = 500
) -> dict[str | None, tuple[float, float, int]]:
    """(mean, max, how many) seconds a recently finished request held a worker slot, per
    model and over all models (key None), from the last ``sample`` finished by an engine;
    empty before any finished."""
    cur = await conn.execute(
        """
        SELECT model, avg(s)::float8 AS mean, max(s)::float8 AS longest, count(*)::int AS n
        FROM (
            SELECT i.model, extract(epoch FROM r.finished_at - r.started_at) AS s
            FROM (
                SELECT request_id, started_at, finished_at FROM request_results
                WHERE started_at IS NOT NULL AND dedup_of IS NULL
                ORDER BY finished_at DESC LIMIT %s
            ) r JOIN request_inputs i ON i.id = r.request_id
        ) recent
        GROUP BY GROUPING SETS ((model), ())
        """,
        (sample,),
    )
    return {
        r["model"]: (r["mean"], r["longest"], r["n"])
        for r in await cur.fetchall()
        if r["mean"] is not None
    }


async def live_workers(conn: Conn) -> dict[str, int]:
    cur = await conn.execute(
        "SELECT pool, count(*) AS n FROM workers WHERE state = 'running' GROUP BY pool"
    )
    return {r["pool"]: r["n"] for r in await cur.fetchall()}


async def live_workers_by_location(conn: Conn) -> dict[str, dict[str | None, int]]:
    """Running workers per pool and location (``{pool: {location: n}}``), counted as
    :func:`live_workers` counts them; location None: workers that declared none."""
    cur = await conn.execute(
        """
        SELECT pool, location, count(*) AS n FROM workers WHERE state = 'running'
        GROUP BY pool, location
        """
    )
    out: dict[str, dict[str | None, int]] = {}
    for r in await cur.fetchall():
        out.setdefault(r["pool"], {})[r["location"]] = r["n"]
    return out


async def serving_spot_workers(conn: Conn) -> dict[str, set[str]]:
    """Ids of the running spot workers per declared location (workers without one left
    out): the escalate duty's placement tells departures from them."""
    cur = await conn.execute(
        """
        SELECT id, location FROM workers
        WHERE state = 'running' AND pool = 'spot' AND location IS NOT NULL
        """
    )
    out: dict[str, set[str]] = {}
    for r in await cur.fetchall():
        out.setdefault(r["location"], set()).add(r["id"])
    return out


async def move_to_dedicated(conn: Conn, batch_id: str, n: int, reason: str) -> int:
    """Move up to ``n`` of a batch's queued spot requests (line order) to dedicated."""
    cur = await conn.execute(
        """
        SELECT id FROM requests
        WHERE batch_id = %(batch)s AND status = 'queued' AND pool = 'spot'
        ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED
        """,
        {"batch": batch_id, "n": n},
    )
    rows = [Requeue(r["id"], escalate=reason) for r in await cur.fetchall()]
    return (await requeue(conn, ("queued",), rows)).n


async def return_to_spot(conn: Conn, batch_id: str, n: int) -> int:
    """Send up to ``n`` of a batch's queued dedicated requests (line order) back to the
    spot pool, keeping their place in time; how many went. Their escalation stays on
    record (the batch's count and the request's reason: it was escalated once)."""
    cur = await conn.execute(
        """
        UPDATE requests SET pool = 'spot'
        WHERE id IN (
            SELECT id FROM requests
            WHERE batch_id = %(batch)s AND status = 'queued' AND pool = 'dedicated'
            ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED)
        """,
        {"batch": batch_id, "n": n},
    )
    if cur.rowcount:
        await notify_queued(conn)
    return cur.rowcount


async def record_estimates(conn: Conn, estimates: Mapping[str, datetime | None]) -> int:
    """Store the estimated completion (None: unknown) of in-progress batches in one
    statement. The duty passes only the estimates that moved (``policy.eta.moved``), so a
    steady batch costs no WAL; rows another transaction holds (a finisher) are skipped until
    the next tick. Returns how many rows changed."""
    if not estimates:
        return 0
    cur = await conn.execute(
        """
        WITH due AS (
            SELECT b.id, v.eta
            FROM unnest(%s::text[], %s::timestamptz[]) AS v(id, eta)
            JOIN batches b ON b.id = v.id
            WHERE b.status = 'in_progress'
            ORDER BY b.id
            FOR UPDATE OF b SKIP LOCKED
        )
        UPDATE batches b SET estimated_completion_at = due.eta FROM due WHERE b.id = due.id
        """,
        (list(estimates), list(estimates.values())),
    )
    return cur.rowcount


async def publish(conn: Conn, values: Mapping[str, Any]) -> None:
    """Set the published values (name -> JSON value) in one statement."""
    await conn.execute(
        """
        INSERT INTO scheduler_state (name, value, updated_at)
        SELECT name, value, now() FROM unnest(%s::text[], %s::jsonb[]) AS v(name, value)
        ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
        """,
        (list(values), [Jsonb(v) for v in values.values()]),
    )


async def published_all(conn: Conn) -> dict[str, Any]:
    cur = await conn.execute("SELECT name, value FROM scheduler_state")
    return {r["name"]: r["value"] for r in await cur.fetchall()}


async def published(conn: Conn, name: str) -> Any:
    cur = await conn.execute("SELECT value FROM scheduler_state WHERE name = %s", (name,))
    row = await cur.fetchone()
    return row["value"] if row else None
