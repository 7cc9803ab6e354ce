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
    SELECT c.id, c.batch_id, c.status, c.dedup_of, c.response_status,
        c.response_request_id, c.response_body, c.prompt_tokens, c.completion_tokens
    FROM requests c WHERE c.input_hash = n2.input_hash AND c.id < {bound}
    ORDER BY c.input_hash, c.id OFFSET 0
"""
# Earlier output can only come from before this batch: the walk stops at its first row.
_BEFORE_BATCH = "(SELECT min(id) FROM requests WHERE batch_id = %(batch)s)"
REUSE_COMPLETED = f"""
UPDATE requests n SET status = 'completed', dedup_of = m.src_id, finished_at = now(),
    response_status = m.response_status, response_request_id = m.response_request_id,
    response_body = m.response_body, prompt_tokens = m.prompt_tokens,
    completion_tokens = m.completion_tokens
FROM (
    SELECT n2.id AS new_id, src.*
    FROM requests n2
    CROSS JOIN LATERAL (
        SELECT r.id AS src_id, r.response_status, r.response_request_id, r.response_body,
            r.prompt_tokens, r.completion_tokens
        FROM ({_SAME_INPUT.format(bound=_BEFORE_BATCH)}) r JOIN batches b ON b.id = r.batch_id
        WHERE r.status = 'completed' AND r.response_status BETWEEN 200 AND 299
          AND {_IN_SCOPE}
        LIMIT 1
    ) src
    WHERE n2.batch_id = %(batch)s AND n2.status = 'queued'
) m
WHERE n.id = m.new_id
"""

FOLLOW_IN_FLIGHT = f"""
UPDATE requests n SET status = 'waiting', dedup_of = m.leader_id
FROM (
    SELECT n2.id AS new_id, leader.id AS leader_id
    FROM requests n2
    CROSS JOIN LATERAL (
        SELECT r.id FROM ({_SAME_INPUT.format(bound="n2.id")}) r
        JOIN batches b ON b.id = r.batch_id
        WHERE r.status IN ('queued', 'running') AND r.dedup_of IS NULL AND {_IN_SCOPE}
        LIMIT 1
    ) leader
    WHERE n2.batch_id = %(batch)s AND n2.status = 'queued'
) m
WHERE n.id = m.new_id
"""


async def deduplicate_batch(
    conn: Conn, batch_id: str, owner_id: str, scope: str
) -> tuple[list[Tally], int]:
    """At ingest: complete the batch's requests that match a finished 2xx request in scope,
    and make the rest that match a queued or running one (in this batch or another) wait
    for it. Returns (completed from earlier output, counted; how many now wait)."""
    if scope == "off":
        return [], 0
    params = {"batch": batch_id, "owner": owner_id, "scope": scope}
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
        UPDATE requests f SET status = 'completed', finished_at = now(),
            response_status = l.response_status, response_request_id = l.response_request_id,
            response_body = l.response_body, prompt_tokens = l.prompt_tokens,
            completion_tokens = l.completion_tokens
        FROM requests l
        WHERE f.status = 'waiting' AND l.id = f.dedup_of AND l.status = 'completed'
          AND l.response_status BETWEEN 200 AND 299
        """,
            "f",
            pool="none",
        )
    )
    orphans = await conn.execute(
        """
        SELECT f.id FROM requests f JOIN requests l ON l.id = f.dedup_of
        WHERE f.status = 'waiting'
          AND l.status IN ('completed', 'failed', 'cancelled', 'expired')
          AND NOT (l.status = 'completed' AND l.response_status BETWEEN 200 AND 299)
        LIMIT 5000
        """
    )
    requeued = await requeue(
        conn, ("waiting",), [Requeue(r["id"]) for r in await orphans.fetchall()]
    )
    return await fetch_tallies(done), requeued.n
