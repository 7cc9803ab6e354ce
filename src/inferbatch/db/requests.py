"""The request queue: claim, fenced result writes, re-queueing and rescue.

Three tables share a request's id: ``request_inputs`` (what arrived, written once at
ingest), ``requests`` (the narrow queue row: status, pool, priority, deadline, attempt,
owner) and ``request_results`` (how it ended, one insert when it settles). Only the queue
row is ever updated.

A claimed row carries ``lease_owner`` and ``attempts``; every write of a result is
conditional on ``status = 'running'``, the owner and the attempt number that was claimed,
so a worker that lost its claim can never overwrite a newer attempt.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from inferbatch import residency
from inferbatch.db import locations as location_sets
from inferbatch.db.counters import append_deltas, gpu_pool_of, settled_deltas
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
    """The parsed answer (for tests and callers that build one)."""
    response_text: str | None = None
    """The answer as JSON text, stored as is when given (else ``response_body`` dumped)."""
    engine_request_id: str | None = None
    error: dict[str, Any] | None = None
    retry_after: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    charged: bool = True
    gpu_seconds: float = 0.0
    """The engine time this attempt used (see :mod:`inferbatch.worker.gputime`)."""
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


RESULT_COLUMNS = """request_id, batch_id, status, pool, attempt, worker_id, started_at,
    finished_at, response_status, response_request_id, response_body, error, prompt_tokens,
    completion_tokens, cached_tokens, reasoning_tokens, dedup_of, gpu_seconds"""


def tallied(update: str, alias: str = "requests", pool: str | None = None) -> str:
    """Wrap an UPDATE of ``requests`` (aliased ``alias``) that settles requests without an
    engine answer (cancelled, expired, or completed from an identical request's output), so
    that it writes their ``request_results`` rows (a ``completed`` one copies the result of
    the request named by its ``dedup_of``, and its GPU time as time saved), appends their
    counts to ``request_deltas`` (see :mod:`inferbatch.db.counters`) and returns them
    counted as :class:`Tally` rows; ``pool`` overrides the pool reported. They spend no GPU
    time: what earlier attempts of a cancelled or expired one spent was counted when each
    went back to the queue, and stays on its result."""
    pool_expr = f"'{pool}'" if pool else "w.pool"
    group = "w.url, w.model" if pool else "w.url, w.model, w.pool"
    return f"""
    WITH settled AS ({update}
        RETURNING {alias}.id, {alias}.batch_id, {alias}.pool, {alias}.status,
            {alias}.dedup_of, {alias}.attempts, {alias}.started_at, {alias}.gpu_seconds),
    written AS (
        INSERT INTO request_results ({RESULT_COLUMNS})
        SELECT s.id, s.batch_id, s.status, s.pool, s.attempts, NULL, s.started_at,
            now(), src.response_status, src.response_request_id, src.response_body, NULL,
            src.prompt_tokens, src.completion_tokens, src.cached_tokens,
            src.reasoning_tokens, s.dedup_of,
            CASE WHEN s.dedup_of IS NOT NULL AND s.status = 'completed'
                THEN coalesce(src.gpu_seconds, 0) ELSE s.gpu_seconds END
        FROM settled s LEFT JOIN request_results src
            ON s.status = 'completed' AND src.request_id = s.dedup_of
        RETURNING request_id, batch_id, pool, status, dedup_of, prompt_tokens,
            completion_tokens, cached_tokens, reasoning_tokens, gpu_seconds
    ),
    counted_rows AS (
        SELECT w.*, i.url, i.model, NULL::text AS gpu_pool, 0::float8 AS spent_gpu_seconds
        FROM written w JOIN request_inputs i ON i.id = w.request_id
    ),
    {settled_deltas("counted_rows")}
    SELECT w.url, w.model, {pool_expr} AS pool, count(*)::int AS n,
        coalesce(sum(coalesce(w.prompt_tokens, 0) + coalesce(w.completion_tokens, 0)), 0)
            ::bigint AS tokens
    FROM counted_rows w GROUP BY {group}
    """


async def fetch_tallies(cur: Any) -> list[Tally]:
    return [
        Tally(r["url"], r["model"], r["pool"], r["n"], r["tokens"]) for r in await cur.fetchall()
    ]


def total(tallies: Sequence[Tally]) -> int:
    return sum(t.n for t in tallies)


_LEASE = """
UPDATE requests r SET
    status = 'running', lease_owner = %(owner)s, attempts = r.attempts + 1, started_at = now()
FROM picked JOIN request_inputs i ON i.id = picked.id
WHERE r.id = picked.id
RETURNING r.id, r.batch_id, i.custom_id, i.url, i.model, i.body, r.attempts,
    r.failed_attempts, r.interruptions, r.pool, r.priority, r.deadline_at, r.prefix_key
"""
"""Leases the rows of the CTE ``picked`` (the end of every claim statement)."""
CLAIM = (
    """
WITH picked AS (
    SELECT id FROM requests
    WHERE status = 'queued' AND locations IS NULL AND pool = %(pool)s
      AND next_attempt_at <= now() {after}
    ORDER BY priority DESC, deadline_at ASC, prefix_key ASC, id ASC
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
)"""
    + _LEASE
)
# A worker that declared a location also takes the restricted requests that allow it (see
# inferbatch.residency): the head of each allowed location set, one probe of
# requests_queue_restricted per set, merged with the unrestricted head. The sets that do
# not allow it are never read. A QueueCursor uses this statement only while some set
# allows its location (the plain one otherwise). Each branch locks up to n rows; the ones
# not taken are released when the claim commits, moments later.
CLAIM_LOCATED = (
    """
WITH anywhere AS (
    SELECT id, priority, deadline_at, prefix_key FROM requests
    WHERE status = 'queued' AND locations IS NULL AND pool = %(pool)s
      AND next_attempt_at <= now() {after}
    ORDER BY priority DESC, deadline_at ASC, prefix_key ASC, id ASC
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
), allowed AS (
    SELECT s.locations FROM location_sets s
    WHERE EXISTS (
        SELECT 1 FROM unnest(s.locations) e
        WHERE e = %(location)s
           OR (right(e, 1) = '*' AND starts_with(%(location)s, left(e, -1))))
), restricted AS (
    SELECT q.* FROM allowed a CROSS JOIN LATERAL (
        SELECT id, priority, deadline_at, prefix_key FROM requests
        WHERE status = 'queued' AND locations IS NOT NULL AND locations = a.locations
          AND pool = %(pool)s AND next_attempt_at <= now() {after}
        ORDER BY priority DESC, deadline_at ASC, prefix_key ASC, id ASC
        LIMIT %(n)s
        FOR UPDATE SKIP LOCKED
    ) q
), picked AS (
    SELECT id FROM (SELECT * FROM anywhere UNION ALL SELECT * FROM restricted) c
    ORDER BY priority DESC, deadline_at ASC, prefix_key ASC, id ASC
    LIMIT %(n)s
)"""
    + _LEASE
)
# Within one priority level the queue indexes order (deadline_at, prefix_key, id)
# ascending, so a row comparison on them starts the index scan right after the last row
# claimed.
_AFTER = (
    "AND priority = %(priority)s "
    "AND (deadline_at, prefix_key, id) > (%(deadline)s, %(prefix_key)s, %(id)s)"
)
_OF_PROJECT = "AND priority = %(priority)s AND project_id = %(project)s "
CLAIM_FROM_START = CLAIM.format(after="")
CLAIM_AFTER = CLAIM.format(after=_AFTER)
CLAIM_LOCATED_FROM_START = CLAIM_LOCATED.format(after="")
CLAIM_LOCATED_AFTER = CLAIM_LOCATED.format(after=_AFTER)
CLAIM_PROJECT_FROM_START = CLAIM.format(after=_OF_PROJECT)
"""One project's head at one priority: a range of ``requests_queue_project``."""
CLAIM_PROJECT_AFTER = CLAIM.format(after=_OF_PROJECT + _AFTER)

FAIR_SHARE_POOL = "spot"
"""The pool whose claim shares capacity between projects by weight (see
:class:`QueueCursor`); the dedicated pool keeps earliest-deadline order, which the
escalation policy's plan assumes."""

ACTIVE_PROJECTS = """
WITH RECURSIVE p AS (
    (SELECT project_id FROM requests
     WHERE status = 'queued' AND locations IS NULL AND pool = %(pool)s
       AND priority = %(priority)s
     ORDER BY priority DESC, project_id LIMIT 1)
    UNION ALL
    SELECT (SELECT r.project_id FROM requests r
            WHERE r.status = 'queued' AND r.locations IS NULL AND r.pool = %(pool)s
              AND r.priority = %(priority)s AND r.project_id > p.project_id
            ORDER BY r.priority DESC, r.project_id LIMIT 1)
    FROM p WHERE p.project_id IS NOT NULL
)
SELECT p.project_id, coalesce(w.weight, 1) AS weight
FROM p LEFT JOIN projects w ON w.id = p.project_id
WHERE p.project_id IS NOT NULL
"""
"""The projects with unrestricted work queued in a pool at one priority, with their weights:
a loose index scan of ``requests_queue_project``, one probe per project."""

TOP_PRIORITY = """
SELECT priority FROM requests
WHERE status = 'queued' AND locations IS NULL AND pool = %(pool)s AND next_attempt_at <= now()
ORDER BY priority DESC, deadline_at, prefix_key, id LIMIT 1
"""
"""The highest priority claimable now in a pool's unrestricted queue (the claim's head)."""


@dataclass(frozen=True, slots=True)
class QueueKey:
    """A position in a pool's claim order: (priority DESC, deadline_at, prefix_key, id)."""

    priority: int
    deadline_at: datetime
    prefix_key: int
    id: int


@dataclass(frozen=True, slots=True)
class ProjectHead:
    """One project's part of the queue at one priority (see :data:`CLAIM_PROJECT_FROM_START`)."""

    project_id: str
    priority: int
    weight: int = 1


async def _claim(
    conn: Conn,
    *,
    pool: str,
    owner: str,
    n: int,
    after: QueueKey | None,
    location: str | None = None,
    head: ProjectHead | None = None,
) -> tuple[list[ClaimedRequest], QueueKey | None]:
    params: dict[str, Any] = {"pool": pool, "owner": owner, "n": n, "location": location}
    if head is not None:
        statement = CLAIM_PROJECT_FROM_START if after is None else CLAIM_PROJECT_AFTER
        params.update(project=head.project_id, priority=head.priority)
    elif after is None:
        statement = CLAIM_FROM_START if location is None else CLAIM_LOCATED_FROM_START
    else:
        statement = CLAIM_AFTER if location is None else CLAIM_LOCATED_AFTER
    if after is not None:
        params.update(
            priority=after.priority,
            deadline=after.deadline_at,
            prefix_key=after.prefix_key,
            id=after.id,
        )
    rows = await (await conn.execute(statement, params)).fetchall()
    rows.sort(key=lambda r: (-r["priority"], r["deadline_at"], r["prefix_key"], r["id"]))
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
            prefix_key=r["prefix_key"],
        )
        for r in rows
    ]
    if last is None:
        return claimed, None
    return claimed, QueueKey(last["priority"], last["deadline_at"], last["prefix_key"], last["id"])


async def claim(
    conn: Conn,
    *,
    pool: str,
    owner: str,
    n: int,
    location: str | None = None,
    fair_share: bool = True,
) -> list[ClaimedRequest]:
    """Lease up to ``n`` queued requests of ``pool`` to worker ``owner``: highest priority
    first, then the earliest deadline (the oldest batch, when windows are equal), then
    those that share a prompt prefix together (see :mod:`inferbatch.scheduler.prefix`),
    then line order. In the spot pool with ``fair_share`` and several projects at the top
    priority, one project's head first (a one-off claim has no account: by project id; a
    :class:`QueueCursor`'s claims share them by weight). The lease lasts while ``owner`` beats (see
    :func:`lost_claims`). Requests whose batch restricts their locations go only to a
    worker whose ``location`` one of them allows (see :mod:`inferbatch.residency`);
    ``None`` takes none of them."""
    cursor = QueueCursor(pool, location=location, fair_share=fair_share)
    return await cursor.claim(conn, owner=owner, n=n)


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

    A cursor with a ``location`` reads the location sets (a handful of rows) at most every
    ``rescan_seconds`` and claims with the plain statement while none allows it:
    unrestricted work then costs a located worker nothing more, and a restricted batch
    queued meanwhile is seen within one interval.

    Fair share (the spot pool, ``fair_share``, unrestricted work): as often as it rescans,
    the cursor finds the top claimable priority and the projects with work queued at it,
    with their weights (:data:`ACTIVE_PROJECTS`). With one, it claims exactly as above.
    With several, each claim serves the project with the least virtual service (requests
    this cursor claimed for it / its weight) from that project's own resume position,
    advances it by what it took, and fills a short claim from the next; once they all run
    dry at that priority the plain claim takes the rest. A project joins at the least
    virtual service of the active ones, so it is served at once but banks nothing for time
    it had no work. While the cursor's location is allowed restricted work, it claims in
    plain order.

    The account is the cursor's own, in memory: every worker splits its own claims by
    weight, so all of them together do, and no claim waits on a shared row (a shared
    counter, updated in each claim transaction, serialised concurrent claims on its row
    lock through their commits). A one-off :func:`claim` has no history: it serves the
    projects in id order.
    """

    RESCAN_SHARE = 20

    def __init__(
        self,
        pool: str,
        rescan_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        location: str | None = None,
        fair_share: bool = True,
    ) -> None:
        self.pool = pool
        self.location = location
        """The claiming worker's location (see :func:`claim`)."""
        self.rescan_seconds = rescan_seconds
        self.fair_share = fair_share and pool == FAIR_SHARE_POOL
        self._clock = clock
        self._after: QueueKey | None = None
        self._rescanned_at = 0.0
        self._rescan_took = 0.0
        self._allowed_any = False
        """Whether some location set allows ``location`` (as of ``_sets_read_at``)."""
        self._sets_read_at: float | None = None
        self._heads: list[ProjectHead] = []
        """The projects with work at the top priority, as of ``_heads_read_at``."""
        self._heads_read_at: float | None = None
        self._heads_took = 0.0
        self._after_head: dict[str, QueueKey] = {}
        self._service: dict[str, float] = {}
        """The active projects' virtual service: requests this cursor claimed / weight."""

    def _rescan_due(self) -> bool:
        interval = max(self.rescan_seconds, self._rescan_took * self.RESCAN_SHARE)
        return self._clock() >= self._rescanned_at + interval

    def _heads_due(self) -> bool:
        if self._heads_read_at is None:
            return True
        interval = max(self.rescan_seconds, self._heads_took * self.RESCAN_SHARE)
        return self._clock() >= self._heads_read_at + interval

    async def claim(self, conn: Conn, *, owner: str, n: int) -> list[ClaimedRequest]:
        """Lease up to ``n`` requests, in claim order within each statement."""
        if self.location is not None and (
            self._sets_read_at is None or self._clock() >= self._sets_read_at + self.rescan_seconds
        ):
            self._sets_read_at = self._clock()
            sets = await location_sets.all_sets(conn)
            allowed_any = any(residency.allows(s, self.location) for s in sets)
            if allowed_any and not self._allowed_any:
                self._after = None  # restricted rows may lie before the resume position
            self._allowed_any = allowed_any
        claimed: list[ClaimedRequest] = []
        if self.fair_share and not self._allowed_any:
            if self._heads_due():
                await self._read_heads(conn)
            if len(self._heads) > 1:
                claimed = await self._claim_shared(conn, owner, n)
                if len(claimed) >= n:
                    return claimed
        return claimed + await self._claim_in_order(conn, owner, n - len(claimed))

    async def _claim_in_order(self, conn: Conn, owner: str, n: int) -> list[ClaimedRequest]:
        async def take(
            k: int, after: QueueKey | None
        ) -> tuple[list[ClaimedRequest], QueueKey | None]:
            location = self.location if self._allowed_any else None
            return await _claim(
                conn, pool=self.pool, owner=owner, n=k, after=after, location=location
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

    async def _read_heads(self, conn: Conn) -> None:
        started = self._clock()
        top = await (await conn.execute(TOP_PRIORITY, {"pool": self.pool})).fetchone()
        self._heads = []
        if top is not None:
            params = {"pool": self.pool, "priority": top["priority"]}
            rows = await (await conn.execute(ACTIVE_PROJECTS, params)).fetchall()
            self._heads = [ProjectHead(r["project_id"], top["priority"], r["weight"]) for r in rows]
        stayed = [self._service[h.project_id] for h in self._heads if h.project_id in self._service]
        floor = min(stayed, default=0.0)
        self._service = {h.project_id: self._service.get(h.project_id, floor) for h in self._heads}
        self._after_head = {}
        self._heads_took = self._clock() - started
        self._heads_read_at = started + self._heads_took

    async def _claim_shared(self, conn: Conn, owner: str, n: int) -> list[ClaimedRequest]:
        """Up to ``n`` from the active projects, least virtual service first."""
        order = sorted(self._heads, key=lambda h: (self._service[h.project_id], h.project_id))
        claimed: list[ClaimedRequest] = []
        for head in order:
            if len(claimed) >= n:
                break
            took = await self._claim_head(conn, owner, head, n - len(claimed))
            self._service[head.project_id] += len(took) / head.weight
            claimed += took
        return claimed

    async def _claim_head(
        self, conn: Conn, owner: str, head: ProjectHead, n: int
    ) -> list[ClaimedRequest]:
        """Up to ``n`` of one project's head, resuming after its last claimed key; a
        project whose head runs dry leaves the active ones until they are read again."""

        async def take(
            k: int, after: QueueKey | None
        ) -> tuple[list[ClaimedRequest], QueueKey | None]:
            return await _claim(conn, pool=self.pool, owner=owner, n=k, after=after, head=head)

        claimed: list[ClaimedRequest] = []
        after = self._after_head.get(head.project_id)
        if after is not None:
            claimed, last = await take(n, after)
            self._after_head[head.project_id] = last or after
            if len(claimed) >= n:
                return claimed
        more, last = await take(n - len(claimed), None)
        if last is not None and len(more) == n - len(claimed):
            self._after_head[head.project_id] = last
        else:
            self._heads = [h for h in self._heads if h != head]
            self._after_head.pop(head.project_id, None)
        return claimed + more


RECORD = f"""
WITH v AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS v(
        id bigint, attempt int, kind text, response_status int, response_body text,
        engine_request_id text, error jsonb, prompt_tokens int, completion_tokens int,
        cached_tokens int, reasoning_tokens int, charged bool, gpu_seconds float8)
), settled AS (
    UPDATE requests r SET
        status = v.kind, lease_owner = NULL,
        failed_attempts = r.failed_attempts + (v.kind = 'failed' AND v.charged)::int,
        gpu_seconds = r.gpu_seconds + v.gpu_seconds
    FROM v
    WHERE r.id = v.id AND r.status = 'running' AND r.lease_owner = %(owner)s
      AND r.attempts = v.attempt
    RETURNING r.id, r.batch_id, r.pool, r.status, r.attempts, r.started_at, r.gpu_seconds,
        v.gpu_seconds AS spent, v.prompt_tokens, v.completion_tokens, v.cached_tokens,
        v.reasoning_tokens
), written AS (
    INSERT INTO request_results ({RESULT_COLUMNS})
    SELECT s.id, s.batch_id, s.status, s.pool, s.attempts, %(owner)s, s.started_at, now(),
        v.response_status, v.engine_request_id, v.response_body, v.error, v.prompt_tokens,
        v.completion_tokens, v.cached_tokens, v.reasoning_tokens, NULL, s.gpu_seconds
    FROM settled s JOIN v ON v.id = s.id
    RETURNING request_id AS id
), counted_rows AS (
    -- from what was settled (each settled row is written once): a join of two CTEs has
    -- no estimate and may become a nested loop over both. The model is read by key from
    -- the input row, which the claim read moments ago.
    SELECT s.batch_id, s.pool, s.status, NULL::bigint AS dedup_of, s.prompt_tokens,
        s.completion_tokens, s.cached_tokens, s.reasoning_tokens, s.gpu_seconds, i.model,
        s.spent AS spent_gpu_seconds, {gpu_pool_of("%(owner)s", "s.pool")} AS gpu_pool
    FROM settled s JOIN request_inputs i ON i.id = s.id
),
{settled_deltas("counted_rows")}
SELECT id FROM written
"""

RETRIED = f"""
WITH v AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS v(id bigint, gpu_seconds float8)
), spent AS (
    UPDATE requests r SET gpu_seconds = r.gpu_seconds + v.gpu_seconds
    FROM v WHERE r.id = v.id
    RETURNING r.id, r.batch_id, r.pool, v.gpu_seconds,
        {gpu_pool_of("%(owner)s", "r.pool")} AS gpu_pool
), deltas AS (
    SELECT s.batch_id, s.pool, 'failed' AS status, i.model, 0 AS n, 0::bigint AS input_tokens,
        0::bigint AS output_tokens, 0::bigint AS cached_tokens, 0::bigint AS reasoning_tokens,
        0 AS deduplicated, 0::bigint AS dedup_tokens, 0 AS escalated,
        coalesce(sum(s.gpu_seconds) FILTER (WHERE s.gpu_pool = 'spot'), 0)
            AS spot_gpu_seconds,
        coalesce(sum(s.gpu_seconds) FILTER (WHERE s.gpu_pool = 'dedicated'), 0)
            AS dedicated_gpu_seconds,
        0::float8 AS dedup_gpu_seconds
    FROM spent s JOIN request_inputs i ON i.id = s.id
    GROUP BY s.batch_id, s.pool, i.model
),
{append_deltas("deltas", gpu=True)}
SELECT count(*)::int AS n FROM spent
"""
"""The GPU time of attempts that went back to the queue (run after :func:`requeue`
accepted them, in its transaction): added to each request's own, and to the deltas of
the pool that spent it. No result row is written, no request counted."""


def _body_text(body: Any) -> str | None:
    # as JSON text in a string: a body may hold \u0000, which the json type keeps but
    # json_to_recordset cannot extract as a json value
    return None if body is None else orjson.dumps(body).decode()


async def record_outcomes(conn: Conn, owner: str, outcomes: Sequence[Outcome]) -> set[int]:
    """Write a group of results: one statement for the settled (completed, failed), one
    :func:`requeue` for the retried (and one more for the GPU time of those); returns the
    ids whose write was accepted (the others had lost their lease or were
    cancelled/expired meanwhile). Run it in one transaction (a pool connection's block).

    The group travels as one JSON document (serialised in C, parsed by the server) rather
    than as a dozen arrays, whose per-element escaping in Python cost more than the write."""
    settled = [o for o in outcomes if o.kind != "retry"]
    retried = [o for o in outcomes if o.kind == "retry"]
    accepted: set[int] = set()
    if settled:
        rows = orjson.dumps(
            [
                {
                    "id": o.request_id,
                    "attempt": o.attempt,
                    "kind": o.kind,
                    "response_status": o.response_status,
                    "response_body": (
                        o.response_text
                        if o.response_text is not None
                        else _body_text(o.response_body)
                    ),
                    "engine_request_id": o.engine_request_id,
                    "error": o.error,
                    "prompt_tokens": o.prompt_tokens,
                    "completion_tokens": o.completion_tokens,
                    "cached_tokens": o.cached_tokens,
                    "reasoning_tokens": o.reasoning_tokens,
                    "charged": o.charged,
                    "gpu_seconds": o.gpu_seconds,
                }
                for o in settled
            ]
        ).decode()
        cur = await conn.execute(RECORD, {"owner": owner, "rows": rows})
        accepted = {r["id"] for r in await cur.fetchall()}
    if retried:
        done = await requeue(
            conn,
            ("running",),
            [
                Requeue(
                    o.request_id,
                    attempt=o.attempt,
                    owner=owner,
                    delay=o.retry_after,
                    charged=o.charged,
                    escalate=o.escalate,
                    error=o.error,
                    response_status=o.response_status,
                )
                for o in retried
            ],
        )
        accepted |= done.ids
        # attempts that are retried spent GPU time too; only those requeue accepted count
        spent = [
            {"id": o.request_id, "gpu_seconds": o.gpu_seconds}
            for o in retried
            if o.request_id in done.ids and o.gpu_seconds > 0
        ]
        if spent:
            await conn.execute(RETRIED, {"owner": owner, "rows": orjson.dumps(spent).decode()})
    return accepted


@dataclass(frozen=True, slots=True)
class Requeue:
    """One request to send back to the queue with :func:`requeue`."""

    request_id: int
    attempt: int | None = None
    """Fence: the attempt the caller holds; None for any."""
    owner: str | None = None
    """Fence: the lease owner the caller expects; None for any."""
    delay: float = 0.0
    """Seconds before it may be claimed again (backoff)."""
    interrupted: bool = False
    """Work that had started was lost (spot interruption, lost worker): counted."""
    charged: bool = False
    """The attempt counts against the request's retry budget."""
    fresh_budget: bool = False
    """Start the retry budget again (a user's retry of a failed request)."""
    escalate: str | None = None
    """Move it from spot to the dedicated pool, for this reason."""
    error: dict[str, Any] | None = None
    response_status: int | None = None
    """The last attempt's error and HTTP status, kept for the request's detail until the
    next attempt settles."""


@dataclass(frozen=True, slots=True)
class Requeued:
    """What :func:`requeue` did: the ids it moved and the escalations by reason."""

    ids: set[int]
    escalated: dict[str, int]

    @property
    def n(self) -> int:
        return len(self.ids)


REQUEUE = f"""
WITH v AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS v(
        id bigint, attempt int, owner text, delay float8, interrupted bool, charged bool,
        fresh bool, escalate text, error jsonb, response_status int)
), old AS (
    SELECT r.id, r.status, r.pool, res.prompt_tokens, res.completion_tokens
    FROM requests r JOIN v ON v.id = r.id
    LEFT JOIN request_results res ON r.status = 'failed' AND res.request_id = r.id
    WHERE r.status = ANY(%(from)s::text[])
      AND (v.owner IS NULL OR r.lease_owner = v.owner)
      AND (v.attempt IS NULL OR r.attempts = v.attempt)
    FOR UPDATE OF r
), moved AS (
    UPDATE requests r SET
        status = 'queued',
        pool = CASE WHEN v.escalate IS NOT NULL THEN 'dedicated' ELSE r.pool END,
        escalation_reason = CASE WHEN v.escalate IS NOT NULL AND r.pool = 'spot'
            THEN v.escalate ELSE r.escalation_reason END,
        escalated_at = CASE WHEN v.escalate IS NOT NULL AND r.pool = 'spot'
            THEN now() ELSE r.escalated_at END,
        lease_owner = NULL,
        dedup_of = CASE WHEN r.status = 'waiting' THEN NULL ELSE r.dedup_of END,
        interruptions = r.interruptions + v.interrupted::int,
        failed_attempts = CASE WHEN v.fresh THEN 0
            ELSE r.failed_attempts + v.charged::int END,
        next_attempt_at = CASE WHEN r.status = 'queued' THEN r.next_attempt_at
            ELSE now() + make_interval(secs => v.delay) END,
        last_error = CASE WHEN r.status = 'queued' THEN r.last_error
            WHEN r.status = 'failed' THEN NULL ELSE v.error END,
        last_response_status = CASE WHEN r.status = 'queued' THEN r.last_response_status
            WHEN r.status = 'failed' THEN NULL ELSE v.response_status END
    FROM old JOIN v ON v.id = old.id
    WHERE r.id = old.id
    RETURNING r.id, r.batch_id, old.status AS was, old.pool AS was_pool,
        old.prompt_tokens AS was_prompt, old.completion_tokens AS was_completion,
        (old.pool = 'spot' AND r.pool = 'dedicated') AS escalated, v.escalate AS reason
), unsettled AS (
    DELETE FROM request_results
    WHERE request_id IN (SELECT id FROM moved WHERE was = 'failed')
), deltas AS (
    SELECT batch_id, was_pool AS pool, 'failed' AS status,
        (-count(*) FILTER (WHERE was = 'failed'))::int AS n,
        (-coalesce(sum(was_prompt) FILTER (WHERE was = 'failed'), 0))::bigint
            AS input_tokens,
        (-coalesce(sum(was_completion) FILTER (WHERE was = 'failed'), 0))::bigint
            AS output_tokens,
        0::bigint AS cached_tokens, 0::bigint AS reasoning_tokens,
        0 AS deduplicated, 0::bigint AS dedup_tokens,
        count(*) FILTER (WHERE escalated)::int AS escalated
    FROM moved GROUP BY batch_id, was_pool
),
{append_deltas("deltas")}
SELECT id, escalated, reason FROM moved
"""


async def requeue(conn: Conn, from_statuses: Sequence[str], rows: Sequence[Requeue]) -> Requeued:
    """Send requests back to the queue: the one transition for a retry after an engine
    error, a release on shutdown, the rescue of a lost worker's requests, an escalation to
    the dedicated pool, a follower whose leader failed and a user's retry of a failed
    request.

    Each row moves only if its status is one of ``from_statuses`` and its fences (owner,
    attempt) hold. In the same statement the batch counters learn of it (through
    ``request_deltas``: escalations, failed requests that run again), and idle workers are
    notified. A queued request keeps its place in time (only its pool may change)."""
    if not rows:
        return Requeued(set(), {})
    payload = orjson.dumps(
        [
            {
                "id": r.request_id,
                "attempt": r.attempt,
                "owner": r.owner,
                "delay": float(r.delay),
                "interrupted": r.interrupted,
                "charged": r.charged,
                "fresh": r.fresh_budget,
                "escalate": r.escalate,
                "error": r.error,
                "response_status": r.response_status,
            }
            for r in rows
        ]
    ).decode()
    cur = await conn.execute(REQUEUE, {"rows": payload, "from": list(from_statuses)})
    ids: set[int] = set()
    escalated: dict[str, int] = {}
    for r in await cur.fetchall():
        ids.add(r["id"])
        if r["escalated"]:
            escalated[r["reason"]] = escalated.get(r["reason"], 0) + 1
    if ids:
        await notify_queued(conn)
    return Requeued(ids, escalated)


QUEUE_CHANNEL = "inferbatch_queue"
"""Notified whenever requests become claimable, so idle workers claim at once."""


async def notify_queued(conn: Conn) -> None:
    """Wake idle workers when this transaction commits (PostgreSQL delivers a NOTIFY at
    commit and folds repeats within a transaction). Only a hint: workers poll anyway."""
    await conn.execute(f"NOTIFY {QUEUE_CHANNEL}")


@dataclass(frozen=True, slots=True)
class LostClaim:
    """A running request whose owner is not live any more."""

    request_id: int
    attempt: int
    owner: str | None
    pool: str
    interruptions: int
    failed_attempts: int


async def lost_claims(conn: Conn, stale_seconds: float, limit: int = 5000) -> list[LostClaim]:
    """Running requests held by a worker that is not live: stopped, lost, never registered,
    or silent for ``stale_seconds``. Reads only running rows (their partial index) and their
    owners' rows: the cost follows the work in flight, not the history."""
    cur = await conn.execute(
        """
        SELECT r.id, r.attempts, r.lease_owner, r.pool, r.interruptions, r.failed_attempts
        FROM requests r
        WHERE r.status = 'running' AND NOT EXISTS (
            SELECT 1 FROM workers w WHERE w.id = r.lease_owner
              AND w.state IN ('running', 'draining')
              AND w.heartbeat_at >= now() - make_interval(secs => %s))
        LIMIT %s
        """,
        (stale_seconds, limit),
    )
    return [
        LostClaim(
            request_id=r["id"],
            attempt=r["attempts"],
            owner=r["lease_owner"],
            pool=r["pool"],
            interruptions=r["interruptions"],
            failed_attempts=r["failed_attempts"],
        )
        for r in await cur.fetchall()
    ]


async def cancel_queued(conn: Conn) -> list[Tally]:
    """Queued requests of cancelling batches -> cancelled."""
    cur = await conn.execute(
        tallied(
            """
            UPDATE requests SET status = 'cancelled'
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
            UPDATE requests SET status = 'expired', lease_owner = NULL
            WHERE batch_id = %s AND status IN ('queued', 'running', 'waiting')
            """
        ),
        (batch_id,),
    )
    return await fetch_tallies(cur)


async def iter_results(conn: Conn, batch_id: str) -> AsyncIterator[dict[str, Any]]:
    """Every request of a batch in input order, with what the output files need
    (``response_body`` is the stored JSON text).

    Uses a server-side cursor so memory does not grow with the batch.
    """
    async with conn.cursor(name=f"results_{batch_id}") as cur:
        cur.itersize = 2000
        await cur.execute(
            """
            SELECT i.id, i.custom_id, q.status, res.response_status,
                res.response_request_id, res.response_body, res.error, res.prompt_tokens,
                res.completion_tokens, res.cached_tokens, res.reasoning_tokens, res.dedup_of
            FROM request_inputs i JOIN requests q ON q.id = i.id
            LEFT JOIN request_results res ON res.request_id = i.id
            WHERE i.batch_id = %s ORDER BY i.line
            """,
            (batch_id,),
        )
        async for row in cur:
            yield row


async def settled_since(
    conn: Conn, batch_id: str, after: tuple[int, int] | None, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` settled requests of a batch in the order they settled, after the
    cursor ``after`` (``(settled_xid, request_id)`` of the last one read), with what an
    output line needs.

    Only results written by transactions older than every transaction still open are
    read, so a result that commits later can never sort before one already handed out:
    following the cursor sees each result once (one written again after a retry, again).
    A page is one range of the ``request_results_batch`` index.
    """
    xid, request_id = after if after is not None else (0, 0)
    cur = await conn.execute(
        """
        SELECT res.settled_xid::text::bigint AS settled_xid, res.request_id AS id,
            i.custom_id, res.status, res.response_status, res.response_request_id,
            res.response_body, res.error
        FROM request_results res JOIN request_inputs i ON i.id = res.request_id
        WHERE res.batch_id = %(batch)s
          AND (res.settled_xid, res.request_id) > (%(xid)s::text::xid8, %(id)s)
          AND res.settled_xid < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY res.settled_xid, res.request_id
        LIMIT %(limit)s
        """,
        {"batch": batch_id, "xid": xid, "id": request_id, "limit": limit},
    )
    return await cur.fetchall()


async def settled_after(conn: Conn, batch_id: str, after: tuple[int, int] | None) -> bool:
    """Whether any result of the batch sorts after ``after``, visible to readers or not."""
    xid, request_id = after if after is not None else (0, 0)
    cur = await conn.execute(
        """
        SELECT 1 FROM request_results
        WHERE batch_id = %s AND (settled_xid, request_id) > (%s::text::xid8, %s)
        LIMIT 1
        """,
        (batch_id, xid, request_id),
    )
    return await cur.fetchone() is not None


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


_DETAIL = """
    q.id, q.batch_id, i.line, i.custom_id, i.url, i.model, q.status, q.pool, q.priority,
    q.attempts, q.failed_attempts, q.interruptions,
    nullif(q.next_attempt_at, '-infinity') AS next_attempt_at,
    coalesce(res.worker_id, q.lease_owner) AS worker_id, q.escalation_reason,
    q.escalated_at, coalesce(res.started_at, q.started_at) AS started_at, res.finished_at,
    coalesce(res.response_status, q.last_response_status) AS response_status,
    coalesce(res.error, q.last_error) AS error, q.dedup_of, res.prompt_tokens,
    res.completion_tokens
"""
_JOINED = """
    request_inputs i JOIN requests q ON q.id = i.id
    LEFT JOIN request_results res ON res.request_id = i.id
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
        SELECT {_DETAIL} FROM {_JOINED}
        WHERE i.batch_id = %(batch)s AND i.line > %(after)s
          AND (%(status)s::text IS NULL OR q.status = %(status)s)
          AND (%(custom_id)s::text IS NULL OR i.custom_id = %(custom_id)s)
        ORDER BY i.line LIMIT %(limit)s
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
    """One request with its input and output bodies (parsed)."""
    cur = await conn.execute(
        f"""
        SELECT {_DETAIL}, i.body::json AS body, res.response_body::json AS response_body,
            res.response_request_id
        FROM {_JOINED} WHERE i.id = %s
        """,
        (request_id,),
    )
    return await cur.fetchone()


async def requeue_failed(conn: Conn, batch_id: str, request_id: int | None = None) -> int:
    """failed -> queued (all of a batch's, or one), with a fresh retry budget."""
    cur = await conn.execute(
        """
        SELECT request_id AS id FROM request_results
        WHERE batch_id = %(batch)s AND status = 'failed'
          AND (%(id)s::bigint IS NULL OR request_id = %(id)s)
        """,
        {"batch": batch_id, "id": request_id},
    )
    ids = [r["id"] for r in await cur.fetchall()]
    done = await requeue(conn, ("failed",), [Requeue(i, fresh_budget=True) for i in ids])
    return done.n
