"""Running claimed requests against their engines.

Each request runs as a task of its own, placed on one of its engine's replicas within
that replica's in-flight limit (so the engine can batch them; see
:mod:`inferbatch.engines.replicas` and :mod:`inferbatch.engines.limiter`). A replica that
cannot be reached is paused, longer after each failure in a row; its requests go to
another replica, and with none left back to the queue without spending their retry
budget. Every attempt ends as one :class:`Outcome`,
handed to the ``on_done`` callback; a bug here must not lose the request, so it becomes a
retry too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable

from inferbatch.db.requests import Outcome, OutcomeKind
from inferbatch.domain import ClaimedRequest
from inferbatch.engines.client import (
    CONNECTION_LOST,
    TIMEOUT,
    UNAVAILABLE,
    Engine,
    EngineResponse,
    EngineTransportError,
)
from inferbatch.engines.registry import EngineRegistry
from inferbatch.engines.replicas import Replica
from inferbatch.engines.usage import Usage, usage_of
from inferbatch.metrics import WorkerMetrics
from inferbatch.policy.escalation import EscalationConfig, escalate_request
from inferbatch.worker.retry import backoff_seconds, is_retryable
from inferbatch.worker.wait import wait_any

log = logging.getLogger(__name__)

OVERLOAD_STATUSES = frozenset({429, 503})
"""Answers that say the engine has more than it can take: its in-flight limit backs off."""
MALFORMED = "invalid_engine_response"
"""The code of a 2xx answer whose body is not JSON: retried, and failed in the end."""


def _answered(req: ClaimedRequest, kind: OutcomeKind, resp: EngineResponse) -> Outcome:
    """The outcome of an attempt the engine answered, carrying its answer. An engine that
    names no request id gets one here: an output line's ``request_id`` is always a string."""
    usage = usage_of(resp.body) if kind == "completed" else Usage()
    return Outcome(
        req.id,
        req.attempt,
        kind,
        response_status=resp.status,
        response_body=resp.body,
        response_text=resp.text,
        engine_request_id=resp.request_id or f"req_{secrets.token_hex(16)}",
        prompt_tokens=usage.prompt,
        completion_tokens=usage.completion,
        cached_tokens=usage.cached,
        reasoning_tokens=usage.reasoning,
    )


async def _reachable(engine: Engine) -> bool:
    """Whether ``engine`` answers at all (engines without a way to ask count as up)."""
    probe = getattr(engine, "reachable", None)
    return True if probe is None else bool(await probe())


def _errored(req: ClaimedRequest, code: str, message: str) -> Outcome:
    """A failure without an engine answer (final, or the base of a retry)."""
    return Outcome(req.id, req.attempt, "failed", error={"code": code, "message": message})


class Executor:
    """Runs requests as tasks and keeps track of the ones running.

    ``on_done(req, outcome)`` is called once for every request that ran to the end (not
    for one cancelled by :meth:`cancel`), after it has left the running set.
    """

    def __init__(
        self,
        engines: EngineRegistry,
        *,
        worker_id: str,
        pool: str,
        max_attempts: int,
        retry_base_seconds: float,
        retry_max_seconds: float,
        escalation: EscalationConfig | None,
        metrics: WorkerMetrics | None,
        on_done: Callable[[ClaimedRequest, Outcome], None],
    ) -> None:
        self.engines = engines
        self._worker_id = worker_id
        self._pool = pool
        self._max_attempts = max_attempts
        self._retry_base_seconds = retry_base_seconds
        self._retry_max_seconds = retry_max_seconds
        self._escalation = escalation
        self._metrics = metrics
        self._on_done = on_done
        self._running: dict[int, tuple[ClaimedRequest, asyncio.Task[None]]] = {}
        self._started: dict[int, float] = {}
        self._service_ewma: float | None = None
        """Smoothed seconds an engine call takes here: predicts what a drain can finish."""

    # -- engine health -------------------------------------------------------------------

    def all_engines_down_for(self) -> float:
        """Seconds until some engine is worth trying again (0 while one is up)."""
        return min((e.down_for() for e in self.engines.engines), default=0.0)

    def capacity(self) -> int:
        """Requests run at once here now: the engines' current in-flight limits."""
        return max(1, self.engines.capacity())

    def _replica_state(self, replica: Replica, *, up: bool) -> None:
        if self._metrics:
            self._metrics.engine_up.labels(replica.name).set(1 if up else 0)
            self._metrics.engine_limit.labels(replica.name).set(replica.limit.limit)

    # -- one attempt ---------------------------------------------------------------------

    def _fail_or_retry(
        self, req: ClaimedRequest, failed: Outcome, retry_after: float | None
    ) -> Outcome:
        """``failed`` when this was the request's last attempt, else the same outcome as a
        retry after a backoff (and, from spot, perhaps escalated to dedicated)."""
        attempts_after = req.failed_attempts + 1
        if attempts_after >= self._max_attempts:
            return failed
        delay = backoff_seconds(
            attempts_after,
            base=self._retry_base_seconds,
            cap=self._retry_max_seconds,
            retry_after=retry_after,
        )
        escalate = (
            escalate_request(req.interruptions, attempts_after, self._escalation)
            if req.pool == "spot"
            else None
        )
        return dataclasses.replace(failed, kind="retry", retry_after=delay, escalate=escalate)

    async def execute(self, req: ClaimedRequest) -> Outcome:
        """Run one attempt of ``req`` and say how it ended, with the GPU time it used."""
        gpu = [0.0]
        outcome = await self._attempt(req, gpu)
        return dataclasses.replace(outcome, gpu_seconds=gpu[0])

    async def _attempt(self, req: ClaimedRequest, gpu: list[float]) -> Outcome:
        """Call the request's engine and say how the attempt ended. A replica that cannot
        be reached, or that dropped the connection and then cannot be reached, is marked
        down and the request goes to another replica within this attempt; with none left
        it goes back to the queue without spending its retry budget."""
        engines = self.engines.for_model(req.model)
        if engines is None:
            return _errored(req, "model_not_found", f"No engine serves the model {req.model!r}.")
        tried: list[Replica] = []
        while True:
            replica = await engines.acquire(req.id, req.prefix_key, tried)
            if replica is None:
                error = {"code": UNAVAILABLE, "message": f"Engine {engines.name} is unreachable."}
                return Outcome(
                    req.id,
                    req.attempt,
                    "retry",
                    retry_after=max(0.25, engines.down_for()),
                    error=error,
                    charged=False,
                )
            tried.append(replica)
            if self._metrics:
                self._metrics.engine_requests.labels(replica.name).inc()
            sent = time.perf_counter()
            try:
                resp = await replica.engine.call(req.url, req.body)
            except EngineTransportError as exc:
                timed_out = exc.code == TIMEOUT
                gpu[0] += await engines.release(
                    replica,
                    req.id,
                    time.perf_counter() - sent,
                    overloaded=timed_out,
                    informative=False,
                )
                if self._metrics:
                    self._metrics.engine_errors.labels(replica.name, exc.code).inc()
                dead = exc.code == UNAVAILABLE or (
                    exc.code == CONNECTION_LOST and not await _reachable(replica.engine)
                )
                if dead:
                    engines.mark_down(replica)
                    self._replica_state(replica, up=False)
                    continue  # another replica, or an uncharged retry when none is left
                if exc.code == CONNECTION_LOST and engines.has_untried(tried):
                    continue  # the replica is up: one dropped connection, try another
                self._replica_state(replica, up=True)
                return self._fail_or_retry(req, _errored(req, exc.code, exc.message), None)
            overloaded = resp.status in OVERLOAD_STATUSES
            gpu[0] += await engines.release(replica, req.id, resp.seconds, overloaded=overloaded)
            engines.mark_up(replica)
            self._replica_state(replica, up=True)
            return self._answer(req, replica, resp)

    def _answer(self, req: ClaimedRequest, replica: Replica, resp: EngineResponse) -> Outcome:
        if self._metrics:
            self._metrics.engine_latency.labels(replica.name).observe(resp.seconds)
            self._metrics.busy.labels(self._pool).inc(resp.seconds)
        ewma = self._service_ewma
        self._service_ewma = resp.seconds if ewma is None else 0.8 * ewma + 0.2 * resp.seconds
        if 200 <= resp.status < 300 and resp.malformed:
            if self._metrics:
                self._metrics.engine_errors.labels(replica.name, "malformed").inc()
            message = (
                f"The engine answered {resp.status} with a body that is not JSON: "
                f"{resp.body['error']['message'][:200]!r}"
            )
            return self._fail_or_retry(req, _errored(req, MALFORMED, message), None)
        if 200 <= resp.status < 300:
            return _answered(req, "completed", resp)
        if self._metrics:
            self._metrics.engine_errors.labels(replica.name, str(resp.status)).inc()
        failed = _answered(req, "failed", resp)
        if is_retryable(resp.status):
            return self._fail_or_retry(req, failed, resp.retry_after)
        return failed

    async def _run_one(self, req: ClaimedRequest) -> None:
        try:
            outcome = await self.execute(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not lose the request: retry it
            log.exception(
                "request %s failed unexpectedly",
                req.id,
                extra={
                    "request_id": req.id,
                    "batch_id": req.batch_id,
                    "worker_id": self._worker_id,
                },
            )
            outcome = self._fail_or_retry(req, _errored(req, "worker_error", repr(exc)), None)
        self._running.pop(req.id, None)
        self._started.pop(req.id, None)
        self._on_done(req, outcome)

    # -- the running set -----------------------------------------------------------------

    def in_flight(self) -> int:
        """Requests running now."""
        return len(self._running)

    def start_ready(self, ready: deque[ClaimedRequest]) -> None:
        """Start requests from the front of ``ready`` while there are free slots."""
        capacity = self.capacity()
        while ready and len(self._running) < capacity:
            req = ready.popleft()
            task = asyncio.create_task(self._run_one(req), name=f"req-{req.id}")
            self._running[req.id] = (req, task)
            self._started[req.id] = time.monotonic()

    def unlikely_to_finish(self, within: float) -> list[int]:
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

    async def finish_running(self, abort: asyncio.Event, within: float) -> None:
        """Let running requests finish, for at most ``within`` seconds or until ``abort``."""
        tasks = [t for _, t in self._running.values()]
        if tasks:
            log.info("draining %d in-flight requests", len(tasks))
            drain = asyncio.gather(*tasks, return_exceptions=True)
            await wait_any(abort, asyncio.ensure_future(drain), timeout=within)

    async def cancel(self, ids: list[int] | None = None) -> list[ClaimedRequest]:
        """Cancel what still runs (or just ``ids``) and return those requests, still
        leased here: the caller gives them back to the queue."""
        chosen = list(self._running) if ids is None else ids
        pending = [self._running.pop(rid) for rid in chosen if rid in self._running]
        for req, task in pending:
            self._started.pop(req.id, None)
            task.cancel()
        await asyncio.gather(*(t for _, t in pending), return_exceptions=True)
        return [req for req, _ in pending]
