"""The fetch/run loop of a worker process.

One statement claims as many requests as there are free in-flight slots; each claimed
request runs as a task against its engine (so the engine can batch them); results are
written back in groups by a flusher, fenced by lease owner and attempt; one heartbeat on
the worker's own row keeps all its leases (the leader re-queues the requests of a worker
whose beat goes stale). On stop the worker claims nothing more, lets running requests finish
within the drain period, then gives the rest back to the queue at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import psycopg

from inferbatch.db import requests as queue
from inferbatch.db import workers as registry
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.domain import ClaimedRequest
from inferbatch.engines.client import UNAVAILABLE, Engine, EngineTransportError
from inferbatch.engines.registry import EngineRegistry
from inferbatch.ids import new_id
from inferbatch.metrics import WorkerMetrics
from inferbatch.policy.escalation import EscalationConfig, escalate_request
from inferbatch.worker.retry import backoff_seconds, is_retryable

log = logging.getLogger(__name__)

ENGINE_DOWN_MAX_PAUSE = 15.0
"""Longest pause before trying an unreachable engine again."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    pool: str
    lease_seconds: float
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    drain_seconds: float
    poll_seconds: float
    flush_seconds: float
    takes_spot: bool = False
    """A dedicated worker that also runs spot-pool work when its own pool is empty."""
    escalation: EscalationConfig | None = None
    """Per-request rule: move a request to dedicated after spot interruptions or on retry."""
    flush_max: int = 256
    listen_url: str | None = None
    """Where to LISTEN for queue notifications: a session of its own (the session URL, not
    a transaction-mode pooler). None: the pool's URL."""


def _usage(body: object) -> tuple[int | None, int | None]:
    if isinstance(body, dict):
        usage = body.get("usage")
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens")
            completion = usage.get("completion_tokens")
            return (
                prompt if isinstance(prompt, int) else None,
                completion if isinstance(completion, int) else 0,
            )
    return None, None


PREFETCH_SECONDS = 0.1
"""How much work, at the measured completion rate, a worker keeps claimed ahead."""
PREFETCH_MAX = 2048
"""The most requests kept claimed ahead (a claim carries their bodies: ~2 MB at 1 KB)."""


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        db: Pool,
        engines: EngineRegistry,
        metrics: WorkerMetrics | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.engines = engines
        self.metrics = metrics
        self.id = worker_id or new_id(f"wrk_{config.pool}_", 12)
        self.capacity = max(1, engines.total_in_flight)
        self._running: dict[int, tuple[ClaimedRequest, asyncio.Task[None]]] = {}
        self._started: dict[int, float] = {}
        self._service_ewma: float | None = None
        """Smoothed seconds an engine call takes here: predicts what a drain can finish."""
        # claimed, leased, not started yet: a finished request's slot is refilled from here
        # at once, and the buffer is topped up in batches (fewer, larger claims)
        self._ready: deque[ClaimedRequest] = deque()
        self.min_prefetch = max(1, self.capacity // 2)
        self.max_prefetch = max(PREFETCH_MAX, self.min_prefetch)
        self.prefetch = self.min_prefetch
        """Claimed requests to keep ready beyond the running ones: adapted by
        :meth:`_adapt_prefetch` so that engine slots do not wait for claims."""
        self._finished = 0
        """Requests finished here so far (for the completion rate)."""
        self._slots: dict[int, asyncio.Semaphore] = {
            id(e): asyncio.Semaphore(e.max_in_flight) for e in engines.engines
        }
        pools = [config.pool]
        if config.takes_spot and config.pool != "spot":
            pools.append("spot")
        self._cursors = [queue.QueueCursor(pool) for pool in pools]
        self._outcomes: list[Outcome] = []
        self._labels: dict[int, tuple[str, str]] = {}
        """(endpoint, model) of each outcome not yet written, for metrics."""
        self._flushed = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._queued = asyncio.Event()
        """Set by a queue notification (``_listen_loop``): requests may be claimable."""
        self._state = "running"
        self._down_until: dict[int, float] = {}
        self._down_failures: dict[int, int] = {}

    # -- running one request -------------------------------------------------------------

    def _engine_down_for(self, engine: Engine) -> float:
        return max(0.0, self._down_until.get(id(engine), 0.0) - time.monotonic())

    def _mark_engine(self, engine: Engine, *, up: bool) -> None:
        key = id(engine)
        if up:
            self._down_failures.pop(key, None)
            self._down_until.pop(key, None)
        else:
            failures = self._down_failures.get(key, 0) + 1
            self._down_failures[key] = failures
            pause = min(ENGINE_DOWN_MAX_PAUSE, 0.25 * 2.0 ** (failures - 1))
            self._down_until[key] = time.monotonic() + pause
        if self.metrics:
            self.metrics.engine_up.labels(engine.name).set(1 if up else 0)

    def _all_engines_down_for(self) -> float:
        return min((self._engine_down_for(e) for e in self.engines.engines), default=0.0)

    def _fail_or_retry(
        self, req: ClaimedRequest, retry_after: float | None, **kw: object
    ) -> Outcome:
        attempts_after = req.failed_attempts + 1
        if attempts_after < self.config.max_attempts:
            delay = backoff_seconds(
                attempts_after,
                base=self.config.retry_base_seconds,
                cap=self.config.retry_max_seconds,
                retry_after=retry_after,
            )
            escalate = (
                escalate_request(req.interruptions, attempts_after, self.config.escalation)
                if req.pool == "spot"
                else None
            )
            return Outcome(
                req.id,
                req.attempt,
                "retry",
                retry_after=delay,
                escalate=escalate,
                **kw,  # type: ignore[arg-type]
            )
        return Outcome(req.id, req.attempt, "failed", **kw)  # type: ignore[arg-type]

    async def _execute(self, req: ClaimedRequest) -> Outcome:
        engine = self.engines.for_model(req.model)
        if engine is None:
            return Outcome(
                req.id,
                req.attempt,
                "failed",
                error={
                    "code": "model_not_found",
                    "message": f"No engine serves the model {req.model!r}.",
                },
            )
        down_for = self._engine_down_for(engine)
        if down_for > 0:  # known down: give it back without spending the retry budget
            error = {"code": UNAVAILABLE, "message": f"Engine {engine.name} is unreachable."}
            return Outcome(
                req.id, req.attempt, "retry", retry_after=down_for, error=error, charged=False
            )
        async with self._slots[id(engine)]:
            if self.metrics:
                self.metrics.engine_requests.labels(engine.name).inc()
            try:
                resp = await engine.call(req.url, req.body)
            except EngineTransportError as exc:
                if self.metrics:
                    self.metrics.engine_errors.labels(engine.name, exc.code).inc()
                error = {"code": exc.code, "message": exc.message}
                if exc.code == UNAVAILABLE:
                    self._mark_engine(engine, up=False)
                    return Outcome(
                        req.id,
                        req.attempt,
                        "retry",
                        error=error,
                        charged=False,
                        retry_after=self._engine_down_for(engine),
                    )
                return self._fail_or_retry(req, None, error=error)
        if self._down_failures.get(id(engine)):
            self._mark_engine(engine, up=True)
        if self.metrics:
            self.metrics.engine_latency.labels(engine.name).observe(resp.seconds)
            self.metrics.busy.labels(self.config.pool).inc(resp.seconds)
        ewma = self._service_ewma
        self._service_ewma = resp.seconds if ewma is None else 0.8 * ewma + 0.2 * resp.seconds
        common: dict[str, object] = {
            "response_status": resp.status,
            "response_body": resp.body,
            "response_text": resp.text,
            "engine_request_id": resp.request_id,
        }
        if 200 <= resp.status < 300:
            prompt, completion = _usage(resp.body)
            return Outcome(
                req.id,
                req.attempt,
                "completed",
                prompt_tokens=prompt,
                completion_tokens=completion,
                **common,  # type: ignore[arg-type]
            )
        if self.metrics:
            self.metrics.engine_errors.labels(engine.name, str(resp.status)).inc()
        if is_retryable(resp.status):
            return self._fail_or_retry(req, resp.retry_after, **common)
        return Outcome(req.id, req.attempt, "failed", **common)  # type: ignore[arg-type]

    async def _run_one(self, req: ClaimedRequest) -> None:
        try:
            outcome = await self._execute(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not lose the request: retry it
            log.exception(
                "request %s failed unexpectedly",
                req.id,
                extra={"request_id": req.id, "batch_id": req.batch_id, "worker_id": self.id},
            )
            outcome = self._fail_or_retry(
                req, None, error={"code": "worker_error", "message": repr(exc)}
            )
        self._outcomes.append(outcome)
        self._labels[req.id] = (req.url, req.model)
        self._running.pop(req.id, None)
        self._started.pop(req.id, None)
        self._finished += 1
        self._start_ready()
        if len(self._ready) <= self.prefetch // 2:  # wake the claimer only to top up
            self._slot_free.set()
        if len(self._outcomes) >= self.config.flush_max:
            self._flushed.set()

    # -- the loops -----------------------------------------------------------------------

    async def _claim(self, n: int) -> list[ClaimedRequest]:
        """Own pool first; spot-pool work fills the rest when ``takes_spot``."""
        claimed: list[ClaimedRequest] = []
        async with self.db.connection() as conn:
            for cursor in self._cursors:
                claimed += await cursor.claim(conn, owner=self.id, n=n - len(claimed))
                if len(claimed) >= n:
                    break
        return claimed

    def _start_ready(self) -> None:
        """Start buffered requests while there are free in-flight slots."""
        while self._ready and len(self._running) < self.capacity:
            req = self._ready.popleft()
            task = asyncio.create_task(self._run_one(req), name=f"req-{req.id}")
            self._running[req.id] = (req, task)
            self._started[req.id] = time.monotonic()

    def _adapt_prefetch(self, finished: int, elapsed: float) -> None:
        """Size the ready buffer to ``PREFETCH_SECONDS`` of the completion rate measured
        since the last claim, between ``min_prefetch`` and ``max_prefetch``. A fast
        engine so gets few, large claims: every claim statement has a fixed cost, and on a
        busy database fewer of them leave more CPU for the rows. A slow engine keeps a small
        buffer, since prefetched requests hold leases without running. Smoothed."""
        if elapsed <= 0.0:
            return
        rate_based = finished / elapsed * PREFETCH_SECONDS
        target = min(self.max_prefetch, max(self.min_prefetch, rate_based))
        self.prefetch = round((self.prefetch + target) / 2)  # both are >= min_prefetch

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        idle = self.config.poll_seconds / 8
        last_claim, last_finished = time.monotonic(), self._finished
        while not stop.is_set():
            paused = self._all_engines_down_for()
            if paused > 0:  # every engine is unreachable: claiming would only churn
                await _wait_any(stop, timeout=paused)
                continue
            held = len(self._running) + len(self._ready)
            wanted = self.capacity + self.prefetch - held
            # top up in batches: claim when a slot is free or half the buffer is used
            if wanted < (self.prefetch + 1) // 2 and len(self._running) >= self.capacity:
                self._slot_free.clear()
                await _wait_any(stop, self._slot_free, timeout=self.config.poll_seconds)
                continue
            self._queued.clear()  # a notification from now on wakes the idle wait below
            try:
                claimed = await self._claim(wanted)
            except (psycopg.Error, OSError) as exc:
                log.warning("claim failed (%s); retrying", exc)
                await _wait_any(stop, timeout=min(5.0, idle * 4))
                idle = min(self.config.poll_seconds, idle * 2)
                continue
            now = time.monotonic()
            self._adapt_prefetch(self._finished - last_finished, now - last_claim)
            last_claim, last_finished = now, self._finished
            self._ready.extend(claimed)
            self._start_ready()
            if self.metrics and claimed:
                self.metrics.claimed.inc(len(claimed))
            if claimed:
                idle = self.config.poll_seconds / 8
            else:
                await _wait_any(stop, self._queued, timeout=idle)
                idle = min(self.config.poll_seconds, idle * 2)

    async def _flush(self) -> None:
        """Write pending outcomes; on a database error keep them for the next try."""
        if not self._outcomes:
            return
        batch, self._outcomes = self._outcomes, []
        try:
            async with self.db.connection() as conn:
                accepted = await queue.record_outcomes(conn, self.id, batch)
        except (psycopg.Error, OSError) as exc:
            log.warning("writing %d results failed (%s); will retry", len(batch), exc)
            self._outcomes = batch + self._outcomes
            raise
        labels = [self._labels.pop(o.request_id, ("", "")) for o in batch]
        if self.metrics:
            self._count(batch, labels, accepted)

    def _count(
        self, batch: list[Outcome], labels: list[tuple[str, str]], accepted: set[int]
    ) -> None:
        """Count a written group: tallied first, so each label set is looked up once per
        group rather than once per request (this runs for every request)."""
        assert self.metrics is not None
        m, pool = self.metrics, self.config.pool
        kinds: Counter[str] = Counter()
        finished: Counter[tuple[str, str, str]] = Counter()
        tokens: Counter[tuple[str, str]] = Counter()
        escalated: Counter[str] = Counter()
        for o, (endpoint, model) in zip(batch, labels, strict=True):
            if o.request_id not in accepted:
                continue
            kinds[o.kind] += 1
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
        m.escalated(escalated)
        m.fenced.inc(len(batch) - len(accepted))
        m.in_flight.labels(pool).set(len(self._running))

    async def _flush_loop(self, done: asyncio.Event) -> None:
        failures = 0
        while not (done.is_set() and not self._outcomes):
            await _wait_any(done, self._flushed, timeout=self.config.flush_seconds)
            self._flushed.clear()
            try:
                await self._flush()
                failures = 0
            except (psycopg.Error, OSError):
                failures += 1
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))

    async def _listen_loop(self, done: asyncio.Event) -> None:
        """LISTEN for requests becoming claimable and wake the idle claim loop at once. A
        hint only: a lost notification or connection costs at most one poll interval."""
        url = self.config.listen_url or self.db.conninfo
        if not isinstance(url, str):  # a pool configured by a callable: polling only
            return
        delay = 0.5
        while not done.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {queue.QUEUE_CHANNEL}")
                    delay = 0.5
                    self._queued.set()  # anything queued while not listening
                    async for _ in conn.notifies():
                        self._queued.set()
            except (psycopg.Error, OSError) as exc:
                log.warning("queue notifications unavailable (%s); polling", exc)
            await _wait_any(done, timeout=delay)
            delay = min(10.0, delay * 2)

    async def _heartbeat_loop(self, done: asyncio.Event) -> None:
        every = self.config.lease_seconds / 3
        while not done.is_set():
            try:
                async with self.db.connection() as conn:
                    await registry.heartbeat(
                        conn, self.id, state=self._state, in_flight=len(self._running)
                    )
            except (psycopg.Error, OSError) as exc:
                log.warning("heartbeat failed (%s)", exc)
            await _wait_any(done, timeout=every)

    async def _register(self) -> None:
        delay = 0.5
        while True:
            try:
                async with self.db.connection() as conn:
                    await registry.register(
                        conn,
                        worker_id=self.id,
                        pool=self.config.pool,
                        host=socket.gethostname(),
                        pid=os.getpid(),
                    )
                return
            except (psycopg.Error, OSError) as exc:
                log.warning("registering failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)

    async def _release(self, reqs: list[ClaimedRequest], *, interrupted: bool) -> None:
        """Give leases back to the queue at once; ``interrupted`` counts an interruption on
        each (work that had started and is lost), which may move it to dedicated."""
        if not reqs:
            return
        rows = [
            queue.Requeue(
                r.id,
                attempt=r.attempt,
                owner=self.id,
                interrupted=interrupted,
                escalate=escalate_request(
                    r.interruptions + 1, r.failed_attempts, self.config.escalation
                )
                if interrupted and r.pool == "spot"
                else None,
            )
            for r in reqs
        ]
        for delay in (0.1, 0.5, 1.0, 2.0, 5.0):
            try:
                async with self.db.connection() as conn:
                    done = await queue.requeue(conn, ("running",), rows)
                log.info(
                    "released %d requests back to the queue", done.n, extra={"worker_id": self.id}
                )
                if self.metrics:
                    self.metrics.escalated(done.escalated)
                    if interrupted and self.config.pool == "spot":
                        self.metrics.interruptions.labels("drain").inc(done.n)
                return
            except (psycopg.Error, OSError) as exc:
                log.warning("release failed (%s)", exc)
                await asyncio.sleep(delay)
        log.error(
            "could not release %d requests; they go back when this worker is seen stopped",
            len(rows),
        )

    def _unlikely_to_finish(self, within: float) -> list[int]:
        """Running requests that, at the measured service time, will not finish within
        ``within`` seconds (none while nothing has been measured)."""
        if self._service_ewma is None:
            return []
        now = time.monotonic()
        return [
            rid
            for rid in self._running
            if self._started.get(rid, now) + self._service_ewma - now > within
        ]

    async def _release_running(self, ids: list[int] | None = None) -> None:
        """Cancel what still runs (or just ``ids``) and give it back to the queue."""
        chosen = list(self._running) if ids is None else ids
        pending = [self._running.pop(rid) for rid in chosen if rid in self._running]
        for _, task in pending:
            task.cancel()
        await asyncio.gather(*(t for _, t in pending), return_exceptions=True)
        await self._release([req for req, _ in pending], interrupted=True)

    async def run(self, stop: asyncio.Event, abort: asyncio.Event | None = None) -> None:
        """Work until ``stop`` is set, then drain; ``abort`` cuts the drain short."""
        abort = abort or asyncio.Event()
        await self._register()
        done = asyncio.Event()
        flusher = asyncio.create_task(self._flush_loop(done), name="flush")
        heart = asyncio.create_task(self._heartbeat_loop(done), name="heartbeat")
        listener = asyncio.create_task(self._listen_loop(done), name="listen")
        log.info("worker %s started: pool %s, %d slots", self.id, self.config.pool, self.capacity)
        try:
            await self._claim_loop(stop)
        finally:
            self._state = "draining"
            unstarted, self._ready = list(self._ready), deque()
            await self._release(unstarted, interrupted=False)
            doomed = self._unlikely_to_finish(self.config.drain_seconds)
            if doomed:
                log.info(
                    "releasing %d requests at once: they would not finish within the "
                    "%.0f s drain period",
                    len(doomed),
                    self.config.drain_seconds,
                )
                await self._release_running(doomed)
            tasks = [t for _, t in self._running.values()]
            if tasks:
                log.info("draining %d in-flight requests", len(tasks))
                drain = asyncio.gather(*tasks, return_exceptions=True)
                await _wait_any(
                    abort, asyncio.ensure_future(drain), timeout=self.config.drain_seconds
                )
            await self._release_running()
            done.set()
            self._flushed.set()
            try:
                await asyncio.wait_for(flusher, timeout=30)
            except TimeoutError:
                log.error("results could not be written before exit")
            self._state = "stopped"
            heart.cancel()
            listener.cancel()
            try:
                async with self.db.connection() as conn:
                    await registry.heartbeat(conn, self.id, state="stopped", in_flight=0)
            except (psycopg.Error, OSError):
                pass
            log.info("worker %s stopped", self.id)


async def _wait_any(*events: asyncio.Event | asyncio.Future[Any], timeout: float | None) -> None:
    """Wait until any event is set / future is done, or the timeout passes."""
    waiters = [
        asyncio.ensure_future(e.wait()) if isinstance(e, asyncio.Event) else e for e in events
    ]
    if not waiters:
        await asyncio.sleep(timeout or 0)
        return
    _, pending = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for w, e in zip(waiters, events, strict=True):
        if w in pending and isinstance(e, asyncio.Event):
            w.cancel()
