"""Deduplication statements: reuse a finished identical request's output, follow one that
is queued or running, and settle followers when their leader finishes.

Two requests are identical when their ``input_hash`` (SHA-256 of the canonical JSON of
``{url, body}``) is equal. Scope, set per batch: ``user`` reuses the same owner's
requests; ``global`` also reuses those of other owners' ``global`` batches; ``off``
reuses nothing and is reused by nobody. Only 2xx results are ever reused.
"""

from __future__ import annotations

from inferbatch.db.types import Conn

# Requests visible to batch %(batch)s of owner %(owner)s under scope %(scope)s.
_IN_SCOPE = """
    b.dedup_scope <> 'off' AND (
        b.owner_id = %(owner)s
        OR (%(scope)s = 'global' AND b.dedup_scope = 'global'))
"""

REUSE_COMPLETED = f"""
WITH src AS (
    SELECT DISTINCT ON (r.input_hash) r.input_hash, r.id, r.response_status,
        r.response_request_id, r.response_body, r.prompt_tokens, r.completion_tokens
    FROM requests r JOIN batches b ON b.id = r.batch_id
    WHERE r.input_hash IN (SELECT input_hash FROM requests WHERE batch_id = %(batch)s)
      AND r.batch_id <> %(batch)s AND r.status = 'completed'
      AND r.response_status BETWEEN 200 AND 299 AND {_IN_SCOPE}
    ORDER BY r.input_hash, r.dedup_of IS NULL DESC, r.id
)
UPDATE requests n SET status = 'completed', dedup_of = src.id, finished_at = now(),
    response_status = src.response_status, response_request_id = src.response_request_id,
    response_body = src.response_body, prompt_tokens = src.prompt_tokens,
    completion_tokens = src.completion_tokens
FROM src WHERE n.batch_id = %(batch)s AND n.status = 'queued' AND n.input_hash = src.input_hash
"""

FOLLOW_IN_FLIGHT = f"""
WITH leaders AS (
    SELECT DISTINCT ON (r.input_hash) r.input_hash, r.id
    FROM requests r JOIN batches b ON b.id = r.batch_id
    WHERE r.input_hash IN (
            SELECT input_hash FROM requests WHERE batch_id = %(batch)s AND status = 'queued')
      AND r.status IN ('queued', 'running') AND r.dedup_of IS NULL AND {_IN_SCOPE}
    ORDER BY r.input_hash, r.id
)
UPDATE requests n SET status = 'waiting', dedup_of = leaders.id
FROM leaders
WHERE n.batch_id = %(batch)s AND n.status = 'queued' AND n.input_hash = leaders.input_hash
  AND n.id <> leaders.id
"""


async def deduplicate_batch(
    conn: Conn, batch_id: str, owner_id: str, scope: str
) -> tuple[int, int]:
    """At ingest: complete the batch's requests that match a finished 2xx request in scope,
    and make the rest that match a queued or running one (in this batch or another) wait
    for it. Returns (completed from earlier output, now waiting)."""
    if scope == "off":
        return 0, 0
    params = {"batch": batch_id, "owner": owner_id, "scope": scope}
    reused = await conn.execute(REUSE_COMPLETED, params)
    following = await conn.execute(FOLLOW_IN_FLIGHT, params)
    return reused.rowcount, following.rowcount


async def settle_followers(conn: Conn) -> tuple[int, int]:
    """Followers of a leader that completed (2xx) complete with a copy of its output; those
    of a leader that ended otherwise go back to the queue to run themselves. Returns
    (completed, re-queued)."""
    done = await conn.execute(
        """
        UPDATE requests f SET status = 'completed', finished_at = now(),
            response_status = l.response_status, response_request_id = l.response_request_id,
            response_body = l.response_body, prompt_tokens = l.prompt_tokens,
            completion_tokens = l.completion_tokens
        FROM requests l
        WHERE f.status = 'waiting' AND l.id = f.dedup_of AND l.status = 'completed'
          AND l.response_status BETWEEN 200 AND 299
        """
    )
    requeued = await conn.execute(
        """
        UPDATE requests f SET status = 'queued', dedup_of = NULL, next_attempt_at = now()
        FROM requests l
        WHERE f.status = 'waiting' AND l.id = f.dedup_of
          AND l.status IN ('completed', 'failed', 'cancelled', 'expired')
          AND NOT (l.status = 'completed' AND l.response_status BETWEEN 200 AND 299)
        """
    )
    return done.rowcount, requeued.rowcount
