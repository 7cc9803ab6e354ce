"""Deduplication statements: reuse a finished identical request's output, follow one that
is queued or running, and settle followers when their leader finishes.

Two requests are identical when their ``input_hash`` (SHA-256 of the canonical JSON of
``{url, body}``) is equal. Scope, set per batch: ``user`` reuses the same owner's
requests; ``global`` also reuses those of other owners' ``global`` batches; ``off``
reuses nothing and is reused by nobody. Only 2xx results are ever reused.

The statements are written so that their cost follows the new batch and the live work,
whatever the planner believes: the first line of each distinct input in the batch walks
the ``(input_hash, id)`` index backwards from itself (newest first) and stops at the first
row that qualifies; every other row it needs (queue row, result, batch) is read by its key
in a fenced subquery. Joins on freshly copied rows, whose statistics say "one row", would
otherwise be planned as nested loops over whole partial indexes (quadratic in the batch),
and an unanchored join could scan the settled history.

Lines are looked up, and their matches applied, in id order (the order the file was
written in), not in hash order: a batch sent again then reads the earlier batch's rows in
the order they were written, and each chunk of updates touches neighbouring rows. In hash
order every lookup and every update is a random read, and once the tables outgrow the
buffer cache each costs a read from disk (and often a dirty page's write): a batch of
1,000,000 lines sent again took 17.6 times as long as one of 100,000.
"""

from __future__ import annotations

from inferbatch.db.requests import Requeue, Tally, fetch_tallies, requeue, tallied
from inferbatch.db.types import Conn

# Whether batch ``b`` (one read by key) is visible to batch %(batch)s of owner %(owner)s
# under scope %(scope)s.
_IN_SCOPE = """
    b.dedup_scope <> 'off' AND (
        b.owner_id = %(owner)s
        OR (%(scope)s = 'global' AND b.dedup_scope = 'global'))
"""


def _earlier(select: str, where: str) -> str:
    """The newest earlier request with line ``f``'s input, in scope, that satisfies
    ``where`` (over ``q``: its queue row, ``r``: its result or NULLs, ``b``: its batch)."""
    return f"""
    SELECT {select}
    FROM (
        SELECT c.id, c.batch_id FROM request_inputs c
        WHERE c.input_hash = f.input_hash AND c.id < f.id
        ORDER BY c.input_hash DESC, c.id DESC OFFSET 0
    ) c
    CROSS JOIN LATERAL (SELECT status, dedup_of FROM requests WHERE id = c.id OFFSET 0) q
    LEFT JOIN LATERAL (
        SELECT status, response_status, finished_at FROM request_results
        WHERE request_id = c.id OFFSET 0
    ) r ON true
    CROSS JOIN LATERAL (
        SELECT owner_id, dedup_scope FROM batches WHERE id = c.batch_id OFFSET 0
    ) b
    WHERE {_IN_SCOPE} AND {where}
    LIMIT 1
    """


MATCHES = f"""
WITH lines AS (
    SELECT id, input_hash, row_number() OVER w = 1 AS first
    FROM request_inputs WHERE batch_id = %(batch)s
    WINDOW w AS (PARTITION BY input_hash ORDER BY id)
),
matched AS (
    SELECT f.id, f.input_hash, reuse.src_id, follow.leader_id
    FROM (SELECT id, input_hash, first FROM lines ORDER BY id OFFSET 0) f
    LEFT JOIN LATERAL ({
    _earlier(
        "c.id AS src_id",
        "f.first AND r.status = 'completed' AND r.response_status BETWEEN 200 AND 299"
        " AND r.finished_at >= now() - make_interval(secs => %(horizon)s)",
    )
}) reuse ON true
    LEFT JOIN LATERAL ({
    _earlier(
        "coalesce(q.dedup_of, c.id) AS leader_id",
        "f.first AND reuse.src_id IS NULL AND (q.status = 'waiting'"
        " OR (q.status IN ('queued', 'running') AND q.dedup_of IS NULL))",
    )
}) follow ON true
),
spread AS (
    SELECT id, first_value(id) OVER w AS first_id, first_value(src_id) OVER w AS src_id,
        first_value(leader_id) OVER w AS leader_id
    FROM matched
    WINDOW w AS (PARTITION BY input_hash ORDER BY id)
)
SELECT id, src_id,
    CASE WHEN src_id IS NULL THEN coalesce(leader_id, nullif(first_id, id)) END AS leader_id
FROM spread
WHERE src_id IS NOT NULL OR leader_id IS NOT NULL OR id <> first_id
ORDER BY id
"""
"""Every line of the batch that need not run itself: (id, the request whose output it
reuses, or the request it waits for). The first line of each distinct input reuses the
newest 2xx output in scope within the horizon, else follows the newest queued or running
identical request (a waiting one's leader); the batch's other lines with that input do as
their first line does, or wait for it. In id order."""

MATCH_CHUNK = 10_000
"""Matches applied per statement at ingest."""

# The rows were written by this transaction's ingest: no one else sees them yet. The
# ``= ANY`` reads a chunk's rows by key whichever join the planner picks (a hash join over
# the whole of ``requests`` per chunk is quadratic in the batch).
REUSE = """
UPDATE requests n SET status = 'completed', dedup_of = m.src_id
FROM unnest(%(ids)s::bigint[], %(sources)s::bigint[]) m(id, src_id)
WHERE n.id = m.id AND n.id = ANY(%(ids)s::bigint[])
"""
FOLLOW = """
UPDATE requests n SET status = 'waiting', dedup_of = m.leader_id
FROM unnest(%(ids)s::bigint[], %(sources)s::bigint[]) m(id, leader_id)
WHERE n.id = m.id AND n.id = ANY(%(ids)s::bigint[])
"""


async def deduplicate_batch(
    conn: Conn, batch_id: str, owner_id: str, scope: str, horizon_seconds: float
) -> tuple[list[Tally], int]:
    """At ingest, in the transaction that queued the batch: complete the batch's requests
    that match a 2xx request in scope that finished within the last ``horizon_seconds``,
    and make the rest that match a queued or running one (in this batch or another) wait
    for it. Returns (completed from earlier output, counted; how many now wait)."""
    if scope == "off":
        return [], 0
    params = {"batch": batch_id, "owner": owner_id, "scope": scope, "horizon": horizon_seconds}
    reused: list[Tally] = []
    following = 0
    # Matches are read MATCH_CHUNK at a time from a server-side cursor and applied as they
    # come, so memory does not grow with the batch (a batch sent again matches on every
    # line). The cursor reads the snapshot it was opened on; the updates touch only this
    # batch's rows, which no lookup reads. The plan is the one a plain query would get.
    await conn.execute("SET LOCAL cursor_tuple_fraction = 1.0")
    async with conn.cursor(name=f"dedup_{batch_id}") as matches:
        await matches.execute(MATCHES, params)
        while chunk := await matches.fetchmany(MATCH_CHUNK):
            reuse = [(m["id"], m["src_id"]) for m in chunk if m["src_id"] is not None]
            follow = [(m["id"], m["leader_id"]) for m in chunk if m["src_id"] is None]
            if reuse:
                ids, sources = zip(*reuse, strict=True)
                cur = await conn.execute(
                    tallied(REUSE, "n", pool="none"), {"ids": list(ids), "sources": list(sources)}
                )
                reused += await fetch_tallies(cur)
            if follow:
                ids, sources = zip(*follow, strict=True)
                await conn.execute(FOLLOW, {"ids": list(ids), "sources": list(sources)})
                following += len(follow)
    return reused, following


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
