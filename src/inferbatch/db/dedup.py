"""Deduplication statements: reuse a finished identical request's output, follow one that
is queued or running, and settle followers when their leader finishes.

Two requests are identical when their ``input_hash`` (SHA-256 of the canonical JSON of
``{url, body}``) is equal. Scope, set per batch: ``user`` reuses the same owner's
requests; ``global`` also reuses those of other owners' ``global`` batches; ``off``
reuses nothing and is reused by nobody. Only 2xx results are ever reused.
"""

from __future__ import annotations

from inferbatch.db.requests import Requeue, Tally, fetch_tallies, requeue, tallied
from inferbatch.db.types import Conn

# Requests visible to batch %(batch)s of owner %(owner)s under scope %(scope)s.
_IN_SCOPE = """
    b.dedup_scope <> 'off' AND (
        b.owner_id = %(owner)s
        OR (%(scope)s = 'global' AND b.dedup_scope = 'global'))
"""

# Both statements walk the new batch's rows and, for each, read the input_hash index in id
# order and stop at the first earlier row that qualifies (LATERAL ... LIMIT 1), so even a
# batch of thousands of identical lines costs one short index walk per line. The OFFSET 0
# fence keeps that walk on the (input_hash, id) index: freshly copied, unanalysed rows
# otherwise invite plans that scan the whole batch for every line.
_SAME_INPUT = """
    SELECT c.id, c.batch_id FROM request_inputs c
    WHERE c.input_hash = n2.input_hash AND c.id < {bound}
    ORDER BY c.input_hash, c.id OFFSET 0
"""
# Earlier output can only come from before this batch: the walk stops at its first row.
_BEFORE_BATCH = "(SELECT min(id) FROM request_inputs WHERE batch_id = %(batch)s)"
# The copy of the output itself is written by :func:`tallied` from ``dedup_of``.
REUSE_COMPLETED = f"""
UPDATE requests n SET status = 'completed', dedup_of = m.src_id
FROM (
    SELECT n2.id AS new_id, src.src_id
    FROM request_inputs n2
    CROSS JOIN LATERAL (
        SELECT c.id AS src_id
        FROM ({_SAME_INPUT.format(bound=_BEFORE_BATCH)}) c
        JOIN request_results r ON r.request_id = c.id
        JOIN batches b ON b.id = c.batch_id
        WHERE r.status = 'completed' AND r.response_status BETWEEN 200 AND 299
          AND r.finished_at >= now() - make_interval(secs => %(horizon)s)
          AND {_IN_SCOPE}
        LIMIT 1
    ) src
    WHERE n2.batch_id = %(batch)s
) m
WHERE n.id = m.new_id AND n.status = 'queued'
"""

FOLLOW_IN_FLIGHT = f"""
UPDATE requests n SET status = 'waiting', dedup_of = m.leader_id
FROM (
    SELECT n2.id AS new_id, leader.id AS leader_id
    FROM request_inputs n2
    CROSS JOIN LATERAL (
        SELECT c.id FROM ({_SAME_INPUT.format(bound="n2.id")}) c
        JOIN requests r ON r.id = c.id
        JOIN batches b ON b.id = c.batch_id
        WHERE r.status IN ('queued', 'running') AND r.dedup_of IS NULL AND {_IN_SCOPE}
        LIMIT 1
    ) leader
    WHERE n2.batch_id = %(batch)s
) m
WHERE n.id = m.new_id AND n.status = 'queued'
"""


async def deduplicate_batch(
    conn: Conn, batch_id: str, owner_id: str, scope: str, horizon_seconds: float
) -> tuple[list[Tally], int]:
    """At ingest: complete the batch's requests that match a 2xx request in scope that
    finished within the last ``horizon_seconds``, and make the rest that match a queued or
    running one (in this batch or another) wait for it. Returns (completed from earlier
    output, counted; how many now wait)."""
    if scope == "off":
        return [], 0
    params = {"batch": batch_id, "owner": owner_id, "scope": scope, "horizon": horizon_seconds}
    reused = await fetch_tallies(
        await conn.execute(tallied(REUSE_COMPLETED, "n", pool="none"), params)
    )
    following = await conn.execute(FOLLOW_IN_FLIGHT, params)
    return reused, following.rowcount


async def settle_followers(conn: Conn) -> tuple[list[Tally], int]:
    """Followers of a leader that completed (2xx) complete with a copy of its output; those
    of a leader that ended otherwise go back to the queue to run themselves. Returns
    (completed, counted; how many were re-queued)."""
    done = await conn.execute(
        tallied(
            """
        UPDATE requests f SET status = 'completed'
        FROM request_results l
        WHERE f.status = 'waiting' AND l.request_id = f.dedup_of AND l.status = 'completed'
          AND l.response_status BETWEEN 200 AND 299
        """,
            "f",
            pool="none",
        )
    )
    orphans = await conn.execute(
        """
        SELECT f.id FROM requests f JOIN request_results l ON l.request_id = f.dedup_of
        WHERE f.status = 'waiting'
          AND NOT (l.status = 'completed' AND l.response_status BETWEEN 200 AND 299)
        LIMIT 5000
        """
    )
    requeued = await requeue(
        conn, ("waiting",), [Requeue(r["id"]) for r in await orphans.fetchall()]
    )
    return await fetch_tallies(done), requeued.n
