"""The request queue: claim, fenced result writes, leases, release and rescue.

A claimed row carries ``lease_owner`` and ``attempts``; every write of a result is
conditional on ``status = 'running'``, the owner and the attempt number that was claimed,
so a worker that lost its lease can never overwrite a newer attempt.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from inferbatch.db.types import Conn
from inferbatch.domain import ClaimedRequest

OutcomeKind = Literal["completed", "failed", "retry"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt, written back with :func:`record_outcomes`.

    ``completed``: a 2xx response. ``failed``: final, written to the error file.
    ``retry``: back to the queue after ``retry_after`` seconds. ``charged`` says whether
    the attempt counts against the request's retry budget (an engine that could not be
    reached at all is the engine's fault, not the request's).
    """

    request_id: int
    attempt: int
    kind: OutcomeKind
    response_status: int | None = None
    response_body: Any = None
    engine_request_id: str | None = None
    error: dict[str, Any] | None = None
    retry_after: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    charged: bool = True
    escalate: str | None = None
    """With ``retry``: move the request to the dedicated pool, for this reason."""


@dataclass(frozen=True, slots=True)
class Tally:
    """How many requests of one endpoint, model and pool a statement settled, with their
    input + output tokens (for metrics)."""

    endpoint: str
    model: str
    pool: str
    n: int
    tokens: int = 0


def tallied(update: str, alias: str = "requests", pool: str | None = None) -> str:
    """Wrap an UPDATE of ``requests`` (aliased ``alias``) so that it returns its rows
    counted as :class:`Tally` rows; ``pool`` overrides the pool reported."""
    pool_expr = f"'{pool}'" if pool else f"{alias}.pool"
    return f"""
    WITH settled AS ({update}
        RETURNING {alias}.url, {alias}.model, {pool_expr} AS pool,
            coalesce({alias}.prompt_tokens, 0) + coalesce({alias}.completion_tokens, 0) AS t)
    SELECT url, model, pool, count(*)::int AS n, coalesce(sum(t), 0)::bigint AS tokens
    FROM settled GROUP BY url, model, pool
    """


async def fetch_tallies(cur: Any) -> list[Tally]:
    return [
        Tally(r["url"], r["model"], r["pool"], r["n"], r["tokens"]) for r in await cur.fetchall()
    ]


def total(tallies: Sequence[Tally]) -> int:
    return sum(t.n for t in tallies)


CLAIM = """
WITH picked AS (
    SELECT id FROM requests
    WHERE status = 'queued' AND pool = %(pool)s AND next_attempt_at <= now() {after}
    ORDER BY priority DESC, deadline_at ASC, id ASC
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
)
UPDATE requests r SET
    status = 'running', lease_owner = %(owner)s, worker_id = %(owner)s,
    lease_expires_at = now() + make_interval(secs => %(lease)s),
    attempts = r.attempts + 1, started_at = now()
FROM picked WHERE r.id = picked.id
RETURNING r.id, r.batch_id, r.custom_id, r.url, r.model, r.body::text AS body, r.attempts,
    r.failed_attempts, r.interruptions, r.pool, r.priority, r.deadline_at
"""
CLAIM_FROM_START = CLAIM.format(after="")
# Within one priority level the queue index orders (deadline_at, id) ascending, so a row
# comparison on them starts the index scan right after the last row claimed.
CLAIM_AFTER = CLAIM.format(
    after="AND priority = %(priority)s AND (deadline_at, id) > (%(deadline)s, %(id)s)"
)


@dataclass(frozen=True, slots=True)
class QueueKey:
    """A position in a pool's claim order: (priority DESC, deadline_at, id)."""

    priority: int
    deadline_at: datetime
    id: int


async def _claim(
    conn: Conn, *, pool: str, owner: str, n: int, lease_seconds: float, after: QueueKey | None
) -> tuple[list[ClaimedRequest], QueueKey | None]:
    params: dict[str, Any] = {"pool": pool, "owner": owner, "n": n, "lease": lease_seconds}
    if after is None:
        statement = CLAIM_FROM_START
    else:
        statement = CLAIM_AFTER
        params.update(priority=after.priority, deadline=after.deadline_at, id=after.id)
    rows = await (await conn.execute(statement, params)).fetchall()
    rows.sort(key=lambda r: (-r["priority"], r["deadline_at"], r["id"]))  # claim order
    last = rows[-1] if rows else None
    claimed = [
        ClaimedRequest(
            id=r["id"],
            batch_id=r["batch_id"],
            custom_id=r["custom_id"],
            url=r["url"],
            model=r["model"],
            body=r["body"].encode(),
            attempt=r["attempts"],
            failed_attempts=r["failed_attempts"],
            interruptions=r["interruptions"],
            pool=r["pool"],
        )
        for r in rows
    ]
    return claimed, (QueueKey(last["priority"], last["deadline_at"], last["id"]) if last else None)


async def claim(
    conn: Conn, *, pool: str, owner: str, n: int, lease_seconds: float
) -> list[ClaimedRequest]:
    """Lease up to ``n`` queued requests of ``pool``: highest priority first, then the
    earliest deadline (the oldest batch, when windows are equal), then line order."""
    claimed, _ = await _claim(
        conn, pool=pool, owner=owner, n=n, lease_seconds=lease_seconds, after=None
    )
    return claimed


class QueueCursor:
    """Claims from one pool, each claim resuming where the previous one ended.

    A claim from the start of the queue index walks past the entries of every request
    claimed since the oldest open snapshot in the database was taken: while any session
    holds a transaction open, those entries cannot be removed, each costs a heap visit, and
    claiming becomes quadratic in the work done meanwhile. Resuming after the last row
    claimed skips them. Rows can still appear before that position (a request released,
    retried, escalated, or a batch of higher priority), so a claim from the start runs
    whenever the resumed one comes up short and at least every ``rescan_seconds``; that
    interval stretches so that claims from the start take at most ``1 / RESCAN_SHARE`` of
    the time (a held snapshot makes them slow, and this keeps them from dominating).
    Priority therefore takes effect within one rescan interval.
    """

    RESCAN_SHARE = 20

    def __init__(
        self, pool: str, rescan_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pool = pool
        self.rescan_seconds = rescan_seconds
        self._clock = clock
        self._after: QueueKey | None = None
        self._rescanned_at = 0.0
        self._rescan_took = 0.0

    def _rescan_due(self) -> bool:
        interval = max(self.rescan_seconds, self._rescan_took * self.RESCAN_SHARE)
        return self._clock() >= self._rescanned_at + interval

    async def claim(
        self, conn: Conn, *, owner: str, n: int, lease_seconds: float
    ) -> list[ClaimedRequest]:
        """Lease up to ``n`` requests, in claim order within each statement."""

        async def take(
            k: int, after: QueueKey | None
        ) -> tuple[list[ClaimedRequest], QueueKey | None]:
            return await _claim(
                conn, pool=self.pool, owner=owner, n=k, lease_seconds=lease_seconds, after=after
            )

        claimed: list[ClaimedRequest] = []
        if self._after is not None and not self._rescan_due():
            claimed, last = await take(n, self._after)
            self._after = last or self._after
            if len(claimed) >= n:
                return claimed
        started = self._clock()
        more, last = await take(n - len(claimed), None)
        self._rescan_took = self._clock() - started
        self._rescanned_at = started + self._rescan_took
        # everything before the last row a claim from the start took is taken, locked or
        # not yet due; a short claim took all there was
        self._after = last if len(more) == n - len(claimed) else None
        return claimed + more


RECORD = """
UPDATE requests r SET
    status = CASE WHEN v.kind = 'retry' THEN 'queued' ELSE v.kind END,
    pool = CASE WHEN v.kind = 'retry' AND v.escalate IS NOT NULL THEN 'dedicated'
        ELSE r.pool END,
    escalation_reason = CASE WHEN v.kind = 'retry' AND v.escalate IS NOT NULL
        AND r.pool = 'spot' THEN v.escalate ELSE r.escalation_reason END,
    escalated_at = CASE WHEN v.kind = 'retry' AND v.escalate IS NOT NULL
        AND r.pool = 'spot' THEN now() ELSE r.escalated_at END,
    lease_owner = NULL, lease_expires_at = NULL,
    finished_at = CASE WHEN v.kind = 'retry' THEN NULL ELSE now() END,
    failed_attempts = r.failed_attempts + (v.kind <> 'completed' AND v.charged)::int,
    next_attempt_at = CASE WHEN v.kind = 'retry'
        THEN now() + make_interval(secs => v.retry_after) ELSE r.next_attempt_at END,
    response_status = v.response_status,
    response_request_id = v.engine_request_id,
    response_body = v.response_body::json,
    error = v.error,
    prompt_tokens = v.prompt_tokens,
    completion_tokens = v.completion_tokens
FROM json_to_recordset(%(rows)s::json) AS v(
    id bigint, attempt int, kind text, response_status int, response_body text,
    engine_request_id text, error jsonb, retry_after float8, prompt_tokens int,
    completion_tokens int, charged bool, escalate text)
WHERE r.id = v.id AND r.status = 'running' AND r.lease_owner = %(owner)s
  AND r.attempts = v.attempt
RETURNING r.id
"""


async def record_outcomes(conn: Conn, owner: str, outcomes: Sequence[Outcome]) -> set[int]:
    """Write many results in one statement; returns the ids whose write was accepted
    (the others had lost their lease or were cancelled/expired meanwhile).

    The group travels as one JSON document (serialised in C, parsed by the server) rather
    than as a dozen arrays, whose per-element escaping in Python cost more than the write."""
    if not outcomes:
        return set()
    rows = orjson.dumps(
        [
            {
                "id": o.request_id,
                "attempt": o.attempt,
                "kind": o.kind,
                "response_status": o.response_status,
                # as JSON text in a string: a body may hold \u0000, which the json type
                # keeps but json_to_recordset cannot extract as a json value
                "response_body": None
                if o.response_body is None
                else orjson.dumps(o.response_body).decode(),
                "engine_request_id": o.engine_request_id,
                "error": o.error,
                "retry_after": float(o.retry_after),
                "prompt_tokens": o.prompt_tokens,
                "completion_tokens": o.completion_tokens,
                "charged": o.charged,
                "escalate": o.escalate,
            }
            for o in outcomes
        ]
    ).decode()
    cur = await conn.execute(RECORD, {"owner": owner, "rows": rows})
    return {r["id"] for r in await cur.fetchall()}


async def extend_leases(conn: Conn, owner: str, lease_seconds: float) -> int:
    """Heartbeat: push out the lease of every request ``owner`` runs."""
    cur = await conn.execute(
        """
        UPDATE requests SET lease_expires_at = now() + make_interval(secs => %s)
        WHERE status = 'running' AND lease_owner = %s
        """,
        (lease_seconds, owner),
    )
    return cur.rowcount


QUEUE_CHANNEL = "inferbatch_queue"
"""Notified whenever requests become claimable, so idle workers claim at once."""


async def notify_queued(conn: Conn) -> None:
    """Wake idle workers when this transaction commits (PostgreSQL delivers a NOTIFY at
    commit and folds repeats within a transaction). Only a hint: workers poll anyway."""
    await conn.execute(f"NOTIFY {QUEUE_CHANNEL}")


async def release(
    conn: Conn, owner: str, claims: Sequence[tuple[int, int]], *, interrupted: bool
) -> int:
    """Give (id, attempt) leases back to the queue at once, e.g. on shutdown."""
    if not claims:
        return 0
    cur = await conn.execute(
        """
        UPDATE requests r SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
            interruptions = r.interruptions + %(inc)s
        FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS v(id, attempt)
        WHERE r.id = v.id AND r.status = 'running' AND r.lease_owner = %(owner)s
          AND r.attempts = v.attempt
        """,
        {
            "owner": owner,
            "inc": int(interrupted),
            "ids": [c[0] for c in claims],
            "attempts": [c[1] for c in claims],
        },
    )
    if cur.rowcount:
        await notify_queued(conn)
    return cur.rowcount


async def rescue_expired(conn: Conn, limit: int = 5000) -> list[dict[str, Any]]:
    """Re-queue running requests whose lease ran out. A spot worker that stopped renewing
    its leases was most likely reclaimed without notice: that counts as an interruption.
    Returns the rescued rows (id, worker_id, pool, interruptions, failed_attempts)."""
    cur = await conn.execute(
        """
        WITH lost AS (
            SELECT id FROM requests
            WHERE status = 'running' AND lease_expires_at < now()
            ORDER BY lease_expires_at LIMIT %s FOR UPDATE SKIP LOCKED
        )
        UPDATE requests r SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
            interruptions = r.interruptions + (r.pool = 'spot')::int
        FROM lost WHERE r.id = lost.id
        RETURNING r.id, r.worker_id, r.pool, r.interruptions, r.failed_attempts
        """,
        (limit,),
    )
    rescued = await cur.fetchall()
    if rescued:
        await notify_queued(conn)
    return rescued


async def cancel_queued(conn: Conn) -> list[Tally]:
    """Queued requests of cancelling batches -> cancelled."""
    cur = await conn.execute(
        tallied(
            """
            UPDATE requests SET status = 'cancelled', finished_at = now()
            WHERE status IN ('queued', 'waiting')
              AND batch_id IN (SELECT id FROM batches WHERE status = 'cancelling')
            """
        )
    )
    return await fetch_tallies(cur)


async def expire_unsettled(conn: Conn, batch_id: str) -> list[Tally]:
    """Queued and running requests of a batch past its deadline -> expired. A running
    request's late result is then refused by the fence."""
    cur = await conn.execute(
        tallied(
            """
            UPDATE requests SET status = 'expired', finished_at = now(), lease_owner = NULL
            WHERE batch_id = %s AND status IN ('queued', 'running', 'waiting')
            """
        ),
        (batch_id,),
    )
    return await fetch_tallies(cur)


async def iter_results(conn: Conn, batch_id: str) -> AsyncIterator[dict[str, Any]]:
    """Every request of a batch in input order, with what the output files need.

    Uses a server-side cursor so memory does not grow with the batch.
    """
    async with conn.cursor(name=f"results_{batch_id}") as cur:
        cur.itersize = 2000
        await cur.execute(
            """
            SELECT id, custom_id, status, response_status, response_request_id,
                response_body, error, prompt_tokens, completion_tokens, dedup_of
            FROM requests WHERE batch_id = %s ORDER BY line
            """,
            (batch_id,),
        )
        async for row in cur:
            yield row


async def queue_stats(conn: Conn) -> list[dict[str, Any]]:
    """Counts of live requests by status, pool and priority (unsettled rows only: cheap)."""
    cur = await conn.execute(
        """
        SELECT status, pool, priority, count(*) AS n,
            extract(epoch FROM now() - min(batch_created_at)) AS oldest_s
        FROM requests WHERE status IN ('queued', 'running', 'waiting')
        GROUP BY status, pool, priority
        """
    )
    return await cur.fetchall()


async def settled_stats(conn: Conn) -> list[dict[str, Any]]:
    cur = await conn.execute(
        """
        SELECT status, pool, count(*) AS n FROM requests
        WHERE status NOT IN ('queued', 'running', 'waiting') GROUP BY status, pool
        """
    )
    return await cur.fetchall()


_DETAIL = """
    id, batch_id, line, custom_id, url, model, status, pool, priority, attempts,
    failed_attempts, interruptions,
    nullif(next_attempt_at, '-infinity') AS next_attempt_at, worker_id,
    escalation_reason, escalated_at, started_at, finished_at,
    response_status, error, dedup_of, prompt_tokens, completion_tokens
"""


async def list_for_batch(
    conn: Conn,
    batch_id: str,
    *,
    status: str | None,
    custom_id: str | None,
    after_line: int,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit`` + 1 requests of a batch in input order after ``after_line``."""
    cur = await conn.execute(
        f"""
        SELECT {_DETAIL} FROM requests
        WHERE batch_id = %(batch)s AND line > %(after)s
          AND (%(status)s::text IS NULL OR status = %(status)s)
          AND (%(custom_id)s::text IS NULL OR custom_id = %(custom_id)s)
        ORDER BY line LIMIT %(limit)s
        """,
        {
            "batch": batch_id,
            "after": after_line,
            "status": status,
            "custom_id": custom_id,
            "limit": limit + 1,
        },
    )
    return await cur.fetchall()


async def get_detail(conn: Conn, request_id: int) -> dict[str, Any] | None:
    """One request with its input and output bodies."""
    cur = await conn.execute(
        f"SELECT {_DETAIL}, body, response_body, response_request_id FROM requests WHERE id = %s",
        (request_id,),
    )
    return await cur.fetchone()


async def requeue_failed(conn: Conn, batch_id: str, request_id: int | None = None) -> int:
    """failed -> queued (all of a batch's, or one), with a fresh retry budget."""
    cur = await conn.execute(
        """
        UPDATE requests SET status = 'queued', failed_attempts = 0, next_attempt_at = now(),
            error = NULL, response_status = NULL, response_body = NULL,
            response_request_id = NULL, finished_at = NULL
        WHERE batch_id = %(batch)s AND status = 'failed'
          AND (%(id)s::bigint IS NULL OR id = %(id)s)
        """,
        {"batch": batch_id, "id": request_id},
    )
    if cur.rowcount:
        await notify_queued(conn)
    return cur.rowcount
