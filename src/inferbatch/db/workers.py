"""The worker registry: one row per worker process, kept fresh by its heartbeat."""

from __future__ import annotations

from typing import Any

from inferbatch.db.types import Conn


async def register(
    conn: Conn, *, worker_id: str, pool: str, host: str, pid: int, location: str | None = None
) -> None:
    """Add a worker; ``location`` is the zone or region it declared (None: none)."""
    await conn.execute(
        "INSERT INTO workers (id, pool, host, pid, location) VALUES (%s, %s, %s, %s, %s)",
        (worker_id, pool, host, pid, location),
    )


async def heartbeat(conn: Conn, worker_id: str, *, state: str, in_flight: int) -> None:
    await conn.execute(
        """
        UPDATE workers SET heartbeat_at = now(), state = %s, in_flight = %s WHERE id = %s
        """,
        (state, in_flight, worker_id),
    )


async def mark_lost(conn: Conn, stale_seconds: float) -> int:
    """Workers silent for ``stale_seconds`` -> lost."""
    cur = await conn.execute(
        """
        UPDATE workers SET state = 'lost'
        WHERE state IN ('running', 'draining')
          AND heartbeat_at < now() - make_interval(secs => %s)
        """,
        (stale_seconds,),
    )
    return cur.rowcount


async def live_by_pool(conn: Conn) -> list[dict[str, Any]]:
    cur = await conn.execute(
        """
        SELECT pool, state, count(*) AS n, coalesce(sum(in_flight), 0) AS in_flight
        FROM workers WHERE state IN ('running', 'draining') GROUP BY pool, state
        """
    )
    return await cur.fetchall()


async def list_recent(conn: Conn, limit: int = 200) -> list[dict[str, Any]]:
    """Live workers first, then the most recently seen others."""
    cur = await conn.execute(
        """
        SELECT id, pool, location, host, pid, state, in_flight, started_at, heartbeat_at
        FROM workers
        ORDER BY state IN ('running', 'draining') DESC, heartbeat_at DESC LIMIT %s
        """,
        (limit,),
    )
    return await cur.fetchall()


async def prune(conn: Conn, older_than_seconds: float, limit: int = 1000) -> int:
    """Forget workers stopped or lost more than ``older_than_seconds`` ago (a worker's
    leftover requests are re-queued by then: a missing owner is never live)."""
    cur = await conn.execute(
        """
        DELETE FROM workers WHERE id IN (
            SELECT id FROM workers WHERE state IN ('stopped', 'lost')
              AND heartbeat_at < now() - make_interval(secs => %s)
            LIMIT %s)
        """,
        (older_than_seconds, limit),
    )
    return cur.rowcount
