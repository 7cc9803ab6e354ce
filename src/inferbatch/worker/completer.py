"""Writing a worker's results back: batched completion and giving leases back.

Outcomes are buffered and written in groups, fenced by lease owner and attempt, every
``flush_seconds`` or as soon as ``flush_max`` are pending; a group that could not be
written stays buffered for the next try. Metrics are counted per written group. Requests
this worker gives up (never started, or cancelled by a drain) go back to the queue in one
statement, an interruption counted on the ones that had started.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

import psycopg

from inferbatch.db import requests as queue
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.domain import ClaimedRequest
from inferbatch.metrics import WorkerMetrics
from inferbatch.policy.escalation import EscalationConfig, escalate_request
from inferbatch.worker.wait import wait_any

log = logging.getLogger(__name__)


class Completer:
    """The pending outcomes of one worker and their writer.

    ``in_flight()`` is how many requests run now (reported with each written group).
    """

    def __init__(
        self,
        db: Pool,
        *,
        owner: str,
        pool: str,
        flush_seconds: float,
        flush_max: int,
        escalation: EscalationConfig | None,
        metrics: WorkerMetrics | None,
        in_flight: Callable[[], int],
    ) -> None:
        self._db = db
        self._owner = owner
        self._pool = pool
        self._flush_seconds = flush_seconds
        self._flush_max = flush_max
        self._escalation = escalation
        self._metrics = metrics
        self._in_flight = in_flight
        self._outcomes: list[Outcome] = []
        self._labels: dict[int, tuple[str, str]] = {}
        """(endpoint, model) of each outcome not yet written, for metrics."""
        self._due = asyncio.Event()
        """Set when ``flush_max`` outcomes are pending: write them without waiting."""

    def add(self, req: ClaimedRequest, outcome: Outcome) -> None:
        """Buffer the outcome of ``req``'s attempt for the next write."""
        self._outcomes.append(outcome)
        self._labels[req.id] = (req.url, req.model)
        if len(self._outcomes) >= self._flush_max:
            self._due.set()

    async def _flush(self) -> None:
        """Write pending outcomes; on a database error keep them for the next try."""
        if not self._outcomes:
            return
        batch, self._outcomes = self._outcomes, []
        try:
            async with self._db.connection() as conn:
                accepted = await queue.record_outcomes(conn, self._owner, batch)
        except (psycopg.Error, OSError) as exc:
            log.warning("writing %d results failed (%s); will retry", len(batch), exc)
            self._outcomes = batch + self._outcomes
            raise
        labels = [self._labels.pop(o.request_id, ("", "")) for o in batch]
        if self._metrics:
            self._count(self._metrics, batch, labels, accepted)

    def _count(
        self,
        m: WorkerMetrics,
        batch: list[Outcome],
        labels: list[tuple[str, str]],
        accepted: set[int],
    ) -> None:
        """Count a written group: tallied first, so each label set is looked up once per
        group rather than once per request (this runs for every request)."""
        pool = self._pool
        kinds: Counter[str] = Counter()
        finished: Counter[tuple[str, str, str]] = Counter()
        tokens: Counter[tuple[str, str]] = Counter()
        escalated: Counter[str] = Counter()
        gpu: dict[str, float] = {}
        for o, (endpoint, model) in zip(batch, labels, strict=True):
            if o.request_id not in accepted:
                continue
            kinds[o.kind] += 1
            gpu[model] = gpu.get(model, 0.0) + o.gpu_seconds  # retried attempts' too
            if o.kind == "retry":
                if o.escalate:
                    escalated[o.escalate] += 1
                continue
            finished[o.kind, endpoint, model] += 1
            tokens["input", model] += o.prompt_tokens or 0
            tokens["output", model] += o.completion_tokens or 0
        for kind, n in kinds.items():
            m.outcomes.labels(pool, kind).inc(n)
        for (kind, endpoint, model), n in finished.items():
            m.finished(kind, endpoint, model, pool, n)
        for (direction, model), n in tokens.items():
            if n:
                m.tokens.labels(direction, m.model(model), pool).inc(n)
        for model, seconds in gpu.items():
            # this worker's pool is the pool of the GPUs, whichever pool the request is in
            m.gpu(pool, model, seconds)
        m.escalated(escalated)
        m.fenced.inc(len(batch) - len(accepted))
        m.in_flight.labels(pool).set(self._in_flight())

    async def run(self, done: asyncio.Event) -> None:
        """Write outcomes until ``done`` is set and none are pending."""
        failures = 0
        while not (done.is_set() and not self._outcomes):
            await wait_any(done, self._due, timeout=self._flush_seconds)
            self._due.clear()
            try:
                await self._flush()
                failures = 0
            except (psycopg.Error, OSError):
                failures += 1
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))

    async def release(self, reqs: list[ClaimedRequest], *, interrupted: bool) -> None:
        """Give leases back to the queue at once; ``interrupted`` counts an interruption on
        each (work that had started and is lost), which may move it to dedicated."""
        if not reqs:
            return
        rows = [
            queue.Requeue(
                r.id,
                attempt=r.attempt,
                owner=self._owner,
                interrupted=interrupted,
                escalate=escalate_request(r.interruptions + 1, r.failed_attempts, self._escalation)
                if interrupted and r.pool == "spot"
                else None,
            )
            for r in reqs
        ]
        for delay in (0.1, 0.5, 1.0, 2.0, 5.0):
            try:
                async with self._db.connection() as conn:
                    done = await queue.requeue(conn, ("running",), rows)
                log.info(
                    "released %d requests back to the queue",
                    done.n,
                    extra={"worker_id": self._owner},
                )
                if self._metrics:
                    self._metrics.escalated(done.escalated)
                    if interrupted and self._pool == "spot":
                        self._metrics.interruptions.labels("drain").inc(done.n)
                return
            except (psycopg.Error, OSError) as exc:
                log.warning("release failed (%s)", exc)
                await asyncio.sleep(delay)
        log.error(
            "could not release %d requests; they go back when this worker is seen stopped",
            len(rows),
        )
