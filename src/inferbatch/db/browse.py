"""What the portal reads: the batch list (filtered, sorted, keyset-paginated), dashboard
statistics, activity over time and latency histograms, and its sessions' keys and secret.

Every function takes an open connection and never commits. ``project`` is the project id
to restrict to, or None for everything (admins). Statements are assembled only from the
fixed fragments below; user input only ever travels as parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from inferbatch.db import counters
from inferbatch.db.types import Conn

PriorityClass = Literal["normal", "medium", "high"]
Sort = Literal["newest", "oldest", "deadline", "priority"]
SORTS: tuple[Sort, ...] = ("newest", "oldest", "deadline", "priority")

# Sort -> (columns of the keyset, direction). Each has an index with the same order
# (batches_created, batches_deadline, batches_priority_created; status and project variants).
_SORT_KEYS: dict[Sort, tuple[tuple[str, ...], str]] = {
    "newest": (("created_at", "id"), "DESC"),
    "oldest": (("created_at", "id"), "ASC"),
    "deadline": (("deadline_at", "id"), "ASC"),
    "priority": (("priority", "created_at", "id"), "DESC"),
}
# "normal" is below 5, "medium" 5 to 9, "high" 10 and above (metadata.priority).
_PRIORITY_RANGES: dict[PriorityClass, tuple[int | None, int | None]] = {
    "normal": (None, 5),
    "medium": (5, 10),
    "high": (10, None),
}
_ACTIVE = "('validating', 'in_progress', 'finalizing', 'cancelling')"
_OWNER_JOIN = """LEFT JOIN users u ON u.id = b.owner_id
    LEFT JOIN service_accounts sa ON sa.id = b.owner_id"""
"""Who made batch ``b``: a user or a service account."""


@dataclass(frozen=True, slots=True)
class BatchFilter:
    """Conditions of the batch list; None means "any"."""

    status: str | None = None
    priority: PriorityClass | None = None
    endpoint: str | None = None
    created_from: datetime | None = None
    created_before: datetime | None = None


def _batch_where(project: str | None, f: BatchFilter) -> tuple[list[str], dict[str, Any]]:
    conds: list[str] = []
    params: dict[str, Any] = {}
    if project is not None:
        conds.append("b.project_id = %(project)s")
        params["project"] = project
    if f.status is not None:
        conds.append("b.status = %(status)s")
        params["status"] = f.status
    if f.endpoint is not None:
        conds.append("b.endpoint = %(endpoint)s")
        params["endpoint"] = f.endpoint
    if f.priority is not None:
        low, high = _PRIORITY_RANGES[f.priority]
        if low is not None:
            conds.append("b.priority >= %(pmin)s")
            params["pmin"] = low
        if high is not None:
            conds.append("b.priority < %(pmax)s")
            params["pmax"] = high
    if f.created_from is not None:
        conds.append("b.created_at >= %(from)s")
        params["from"] = f.created_from
    if f.created_before is not None:
        conds.append("b.created_at < %(before)s")
        params["before"] = f.created_before
    return conds, params


_LIST_COLUMNS = """
    b.id, b.owner_id, coalesce(u.name, sa.name) AS owner_name, b.status, b.endpoint, b.model,
    b.priority, b.dedup_scope, b.completion_window, b.created_at, b.deadline_at, b.total_count,
    b.completed_count, b.failed_count, b.metadata, b.input_file_id, b.estimated_completion_at
"""


def batch_page_query(
    project: str | None,
    f: BatchFilter,
    *,
    sort: Sort = "newest",
    after: str | None = None,
    before: str | None = None,
    limit: int = 50,
) -> tuple[str, dict[str, Any]]:
    """The statement of one page of :func:`list_batches` (and its parameters).

    Forward pages take the rows past the ``after`` cursor in sort order; backward pages
    the rows before ``before``, read in the opposite order (the caller flips them), so both
    directions walk the same index and stop after ``limit`` + 1 rows.
    """
    columns, direction = _SORT_KEYS[sort]
    conds, params = _batch_where(project, f)
    backward = before is not None
    cursor = before if backward else after
    descending = (direction == "DESC") != backward
    op, scan = ("<", "DESC") if descending else (">", "ASC")
    if cursor is not None:
        keys = ", ".join(f"b.{c}" for c in columns)
        conds.append(
            f"({keys}) {op} (SELECT {', '.join(columns)} FROM batches WHERE id = %(cursor)s)"
        )
        params["cursor"] = cursor
    where = " AND ".join(conds) or "true"
    order = ", ".join(f"b.{c} {scan}" for c in columns)
    params["limit"] = limit + 1
    query = f"""
        SELECT {_LIST_COLUMNS} FROM batches b {_OWNER_JOIN}
        WHERE {where} ORDER BY {order} LIMIT %(limit)s
    """
    return query, params


async def list_batches(
    conn: Conn,
    project: str | None,
    f: BatchFilter,
    *,
    sort: Sort = "newest",
    after: str | None = None,
    before: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], bool]:
    """One page of batches in ``sort`` order, after (or before) the cursor batch id.

    Returns the rows in display order and whether more rows lie beyond the page in the
    direction of travel (forward with ``after``, backward with ``before``).
    """
    query, params = batch_page_query(project, f, sort=sort, after=after, before=before, limit=limit)
    cur = await conn.execute(query, params, prepare=False)
    rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    if before is not None:
        rows.reverse()
    return rows, more


async def count_batches(conn: Conn, project: str | None, f: BatchFilter, cap: int = 10_000) -> int:
    """How many batches match, counting no further than ``cap`` + 1 (shown as "cap+")."""
    conds, params = _batch_where(project, f)
    params["cap"] = cap + 1
    cur = await conn.execute(
        f"""
        SELECT count(*) AS n FROM (
            SELECT 1 FROM batches b WHERE {" AND ".join(conds) or "true"} LIMIT %(cap)s
        ) s
        """,
        params,
        prepare=False,
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def batch_status_counts(conn: Conn, project: str | None) -> dict[str, int]:
    """Batches by status (all of them, from the kept totals; or one project's, counted)."""
    if project is None:
        by_status, _ = await counters.batch_totals(conn)
        return by_status
    conds, params = _batch_where(project, BatchFilter())
    cur = await conn.execute(
        f"SELECT status, count(*) AS n FROM batches b WHERE {' AND '.join(conds) or 'true'}"
        " GROUP BY status",
        params,
        prepare=False,
    )
    return {r["status"]: int(r["n"]) for r in await cur.fetchall()}


def _request_scope(project: str | None, batch_id: str | None) -> tuple[str, dict[str, Any]]:
    conds = ["true"]
    params: dict[str, Any] = {}
    if batch_id is not None:
        conds.append("r.batch_id = %(batch)s")
        params["batch"] = batch_id
    if project is not None:
        conds.append("r.batch_id IN (SELECT id FROM batches WHERE project_id = %(project)s)")
        params["project"] = project
    return " AND ".join(conds), params


def _finished_after(batch_id: str | None) -> str:
    """The condition "finished at or after ``since``". Over one batch it is left out:
    the callers' ``since`` is the batch's start, so all its results qualify, and a
    condition on ``finished_at`` would invite a walk of that index over every batch's
    recent results in place of the batch's own (``request_results_batch``)."""
    return "true" if batch_id is not None else "r.finished_at >= %(since)s"


async def live_requests(
    conn: Conn, project: str | None, batch_id: str | None = None
) -> list[dict[str, Any]]:
    """Unsettled requests (queued, running, and waiting on an identical request) by
    status and pool; reads only unsettled rows (the requests_unsettled index)."""
    scope, params = _request_scope(project, batch_id)
    cur = await conn.execute(
        f"""
        SELECT r.status, r.pool, count(*) AS n FROM requests r
        WHERE r.status IN ('queued', 'running', 'waiting') AND {scope}
        GROUP BY r.status, r.pool
        """,
        params,
        prepare=False,
    )
    return await cur.fetchall()


async def finished_since(
    conn: Conn, project: str | None, since: datetime, batch_id: str | None = None
) -> list[dict[str, Any]]:
    """Requests that finished at or after ``since``, by status and pool, with their tokens
    and how many of them were answered by deduplication (and those answers' tokens)."""
    scope, params = _request_scope(project, batch_id)
    params["since"] = since
    cur = await conn.execute(
        f"""
        SELECT r.status, r.pool, count(*) AS n,
            count(*) FILTER (WHERE r.dedup_of IS NOT NULL) AS deduplicated,
            coalesce(sum(coalesce(r.prompt_tokens, 0) + coalesce(r.completion_tokens, 0)),
                0) AS tokens,
            coalesce(sum(coalesce(r.prompt_tokens, 0) + coalesce(r.completion_tokens, 0))
                FILTER (WHERE r.dedup_of IS NOT NULL), 0) AS dedup_tokens
        FROM request_results r
        WHERE r.finished_at >= %(since)s AND {scope}
        GROUP BY r.status, r.pool
        """,
        params,
        prepare=False,
    )
    return await cur.fetchall()


async def activity_series(
    conn: Conn,
    project: str | None,
    since: datetime,
    bucket_seconds: int,
    batch_id: str | None = None,
) -> list[dict[str, Any]]:
    """Finished requests per time bucket (aligned on ``since``) and pool: completed,
    failed, and completed tokens. Empty buckets are absent. With ``batch_id``, all the
    batch's results (``since`` at or before its start)."""
    scope, params = _request_scope(project, batch_id)
    params.update(since=since, bucket=bucket_seconds)
    cur = await conn.execute(
        f"""
        SELECT date_bin(make_interval(secs => %(bucket)s), r.finished_at, %(since)s)
                AS bucket,
            r.pool,
            count(*) FILTER (WHERE r.status = 'completed') AS completed,
            count(*) FILTER (WHERE r.status = 'failed') AS failed,
            coalesce(sum(coalesce(r.prompt_tokens, 0) + coalesce(r.completion_tokens, 0))
                FILTER (WHERE r.status = 'completed'), 0) AS tokens
        FROM request_results r
        WHERE {_finished_after(batch_id)} AND r.status IN ('completed', 'failed')
          AND {scope}
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        params,
        prepare=False,
    )
    return await cur.fetchall()


async def latency_histogram(
    conn: Conn,
    project: str | None,
    since: datetime,
    edges: Sequence[float],
    batch_id: str | None = None,
) -> list[int]:
    """Counts of requests completed since ``since`` by the duration of their last
    attempt (``finished_at - started_at``): ``len(edges) + 1`` bins, the first below
    ``edges[0]`` seconds, the last at or above ``edges[-1]``. Deduplicated answers,
    which ran no attempt, are left out. With ``batch_id``, all the batch's results
    (``since`` at or before its start)."""
    scope, params = _request_scope(project, batch_id)
    params.update(since=since, edges=[float(e) for e in edges])
    cur = await conn.execute(
        f"""
        SELECT width_bucket(extract(epoch FROM r.finished_at - r.started_at)::float8,
                %(edges)s::float8[]) AS bin, count(*) AS n
        FROM request_results r
        WHERE {_finished_after(batch_id)} AND r.status = 'completed'
          AND r.started_at IS NOT NULL AND r.dedup_of IS NULL AND {scope}
        GROUP BY 1
        """,
        params,
        prepare=False,
    )
    counts = [0] * (len(edges) + 1)
    for row in await cur.fetchall():
        counts[int(row["bin"])] += int(row["n"])
    return counts


# The pace so far: remaining work at the average rate since the batch went in progress.
_PREDICTED_FINISH = """
    CASE WHEN b.status = 'in_progress' AND b.in_progress_at IS NOT NULL
              AND b.completed_count + b.failed_count > 0
         THEN %(now)s + (%(now)s - b.in_progress_at)
              * (greatest(b.total_count - b.completed_count - b.failed_count, 0)::float8
                 / (b.completed_count + b.failed_count))
    END
"""


async def at_risk(
    conn: Conn, project: str | None, now: datetime, limit: int = 20
) -> list[dict[str, Any]]:
    """Unfinished batches likely to miss their deadline: past it already, predicted (at
    their pace so far) to finish after it, or without any finished request when half of
    their window has gone. Soonest deadline first."""
    conds, params = _batch_where(project, BatchFilter())
    conds.append(f"b.status IN {_ACTIVE}")
    params.update(now=now, limit=limit)
    cur = await conn.execute(
        f"""
        SELECT * FROM (
            SELECT b.id, b.status, b.created_at, b.deadline_at, b.total_count,
                b.completed_count, b.failed_count, coalesce(u.name, sa.name) AS owner_name,
                {_PREDICTED_FINISH} AS predicted_finish_at
            FROM batches b {_OWNER_JOIN}
            WHERE {" AND ".join(conds)}
        ) x
        WHERE x.deadline_at <= %(now)s
           OR x.predicted_finish_at > x.deadline_at
           OR (x.completed_count + x.failed_count = 0
               AND %(now)s >= x.created_at + (x.deadline_at - x.created_at) / 2)
        ORDER BY x.deadline_at, x.id LIMIT %(limit)s
        """,
        params,
        prepare=False,
    )
    return await cur.fetchall()


async def predicted_finish(conn: Conn, batch_id: str, now: datetime) -> datetime | None:
    """When the batch should finish at its pace so far (None before any progress)."""
    cur = await conn.execute(
        f"SELECT {_PREDICTED_FINISH} AS at FROM batches b WHERE b.id = %(id)s",
        {"id": batch_id, "now": now},
    )
    row = await cur.fetchone()
    return row["at"] if row else None


async def pool_breakdown(conn: Conn, batch_id: str) -> list[dict[str, Any]]:
    """A batch's finished requests by status and pool, with deduplicated answers, tokens
    and how often its requests were interrupted on spot. Each result's queue row is read
    by its key (a fenced subquery): joined, it invites a scan of the whole queue table,
    which the settled history makes large."""
    cur = await conn.execute(
        """
        SELECT r.status, r.pool, count(*) AS n,
            count(*) FILTER (WHERE r.dedup_of IS NOT NULL) AS deduplicated,
            coalesce(sum(coalesce(r.prompt_tokens, 0) + coalesce(r.completion_tokens, 0))
                FILTER (WHERE r.dedup_of IS NOT NULL), 0) AS dedup_tokens,
            coalesce(sum(q.interruptions), 0) AS interruptions
        FROM request_results r
        CROSS JOIN LATERAL (
            SELECT interruptions FROM requests WHERE id = r.request_id OFFSET 0
        ) q
        WHERE r.batch_id = %s
        GROUP BY r.status, r.pool
        """,
        (batch_id,),
    )
    return await cur.fetchall()


# -- sessions ---------------------------------------------------------------------------------


async def signing_secret(conn: Conn, name: str, candidate: bytes) -> bytes:
    """The stored secret called ``name``; ``candidate`` becomes it if none is stored yet
    (the first replica to ask wins, the others read its secret)."""
    await conn.execute(
        "INSERT INTO portal_secrets (name, secret) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (name, candidate),
    )
    cur = await conn.execute("SELECT secret FROM portal_secrets WHERE name = %s", (name,))
    row = await cur.fetchone()
    assert row is not None
    return bytes(row["secret"])


async def user_name(conn: Conn, user_id: str) -> str | None:
    """The name of a user or service account (shown to admins as a batch's owner)."""
    cur = await conn.execute(
        "SELECT name FROM users WHERE id = %(id)s "
        "UNION ALL SELECT name FROM service_accounts WHERE id = %(id)s LIMIT 1",
        {"id": user_id},
    )
    row = await cur.fetchone()
    return str(row["name"]) if row else None


async def request_status_counts(conn: Conn, batch_id: str) -> dict[str, int]:
    """A batch's requests by status (exact, unlike the batch row's counters, which fold
    cancelled and expired requests into ``failed_count`` once the batch is finished)."""
    cur = await conn.execute(
        """
        SELECT status, count(*) AS n FROM requests
        WHERE batch_id = %(batch)s AND status IN ('queued', 'running', 'waiting')
        GROUP BY status
        UNION ALL
        SELECT status, count(*) FROM request_results WHERE batch_id = %(batch)s GROUP BY status
        """,
        {"batch": batch_id},
    )
    return {r["status"]: int(r["n"]) for r in await cur.fetchall()}
