"""A worker process: claim requests, run them against engines, write the results back.

Three parts, wired together here: the :class:`~inferbatch.worker.claimer.Claimer` leases
requests into a ready buffer, the :class:`~inferbatch.worker.executor.Executor` runs each
one as a task against its engine (so the engine can batch them), and the
:class:`~inferbatch.worker.completer.Completer` writes results back in groups, fenced by
lease owner and attempt. One heartbeat on the worker's own row keeps all its leases (the
leader re-queues the requests of a worker whose beat goes stale). On stop the worker claims
nothing more, lets running requests finish within the drain period, then gives the rest
back to the queue at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

import psycopg

from inferbatch.db import workers as registry
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.domain import ClaimedRequest
from inferbatch.engines.registry import EngineRegistry
from inferbatch.ids import new_id
from inferbatch.metrics import WorkerMetrics
from inferbatch.policy.escalation import EscalationConfig
from inferbatch.worker.claimer import PREFETCH_MAX, PREFETCH_SECONDS, Claimer
from inferbatch.worker.completer import Completer
from inferbatch.worker.executor import Executor
from inferbatch.worker.wait import wait_any

__all__ = [
    "PREFETCH_MAX",
    "PREFETCH_SECONDS",
    "Worker",
    "WorkerConfig",
]

log = logging.getLogger(__name__)


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
    location: str | None = None
    """The zone or region this worker runs in; it may claim requests restricted to it (see
    :mod:`inferbatch.residency`). None: only unrestricted requests."""
    fair_share: bool = True
    """Spot-pool claims share the top priority between projects by weight."""


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
        self.executor = Executor(
            engines,
            worker_id=self.id,
            pool=config.pool,
            max_attempts=config.max_attempts,
            retry_base_seconds=config.retry_base_seconds,
            retry_max_seconds=config.retry_max_seconds,
            escalation=config.escalation,
            metrics=metrics,
            on_done=self._request_done,
        )
        self.claimer = Claimer(
            db,
            owner=self.id,
            pool=config.pool,
            location=config.location,
            fair_share=config.fair_share,
            takes_spot=config.takes_spot,
            capacity=self.executor.capacity,
            poll_seconds=config.poll_seconds,
            listen_url=config.listen_url,
            metrics=metrics,
            in_flight=self.executor.in_flight,
            start=self.executor.start_ready,
            paused_for=self.executor.all_engines_down_for,
        )
        self.completer = Completer(
            db,
            owner=self.id,
            pool=config.pool,
            flush_seconds=config.flush_seconds,
            flush_max=config.flush_max,
            escalation=config.escalation,
            metrics=metrics,
            in_flight=self.executor.in_flight,
        )
        self._state = "running"

    def _request_done(self, req: ClaimedRequest, outcome: Outcome) -> None:
        self.completer.add(req, outcome)
        self.claimer.request_finished()

    async def _heartbeat_loop(self, done: asyncio.Event) -> None:
        every = self.config.lease_seconds / 3
        while not done.is_set():
            try:
                async with self.db.connection() as conn:
                    await registry.heartbeat(
                        conn, self.id, state=self._state, in_flight=self.executor.in_flight()
                    )
            except (psycopg.Error, OSError) as exc:
                log.warning("heartbeat failed (%s)", exc)
            await wait_any(done, timeout=every)

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
                        location=self.config.location,
                    )
                return
            except (psycopg.Error, OSError) as exc:
                log.warning("registering failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)

    async def _release_running(self, ids: list[int] | None = None) -> None:
        """Cancel what still runs (or just ``ids``) and give it back to the queue."""
        cancelled = await self.executor.cancel(ids)
        await self.completer.release(cancelled, interrupted=True)

    async def run(self, stop: asyncio.Event, abort: asyncio.Event | None = None) -> None:
        """Work until ``stop`` is set, then drain; ``abort`` cuts the drain short."""
        abort = abort or asyncio.Event()
        await self._register()
        done = asyncio.Event()
        flusher = asyncio.create_task(self.completer.run(done), name="flush")
        heart = asyncio.create_task(self._heartbeat_loop(done), name="heartbeat")
        listener = asyncio.create_task(self.claimer.listen(done), name="listen")
        log.info(
            "worker %s started: pool %s, up to %d in flight",
            self.id,
            self.config.pool,
            self.engines.total_in_flight,
        )
        try:
            await self.claimer.run(stop)
        finally:
            self._state = "draining"
            await self.completer.release(self.claimer.take_ready(), interrupted=False)
            doomed = self.executor.unlikely_to_finish(self.config.drain_seconds)
            if doomed:
                log.info(
                    "releasing %d requests at once: they would not finish within the "
                    "%.0f s drain period",
                    len(doomed),
                    self.config.drain_seconds,
                )
                await self._release_running(doomed)
            await self.executor.finish_running(abort, self.config.drain_seconds)
            await self._release_running()
            done.set()  # also wakes the flusher for its last write
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
