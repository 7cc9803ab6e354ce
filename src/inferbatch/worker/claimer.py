"""Claiming requests for a worker: the fetch loop.

One statement claims as many requests as there are free in-flight slots plus a ready
buffer: claimed, leased, not started yet. A finished request's slot is refilled from that
buffer at once, and the buffer is topped up in batches (fewer, larger claims), sized to
the measured completion rate. The own pool is claimed first; spot-pool work fills the rest
when the worker ``takes_spot``. An idle claimer polls at a doubling interval and is woken
early by a queue notification (LISTEN); while every engine is down it claims nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

import psycopg

from inferbatch.db import requests as queue
from inferbatch.db.types import Pool
from inferbatch.domain import ClaimedRequest
from inferbatch.metrics import WorkerMetrics
from inferbatch.worker.wait import wait_any

log = logging.getLogger(__name__)

PREFETCH_SECONDS = 0.1
"""How much work, at the measured completion rate, a worker keeps claimed ahead."""
PREFETCH_MAX = 2048
"""The most requests kept claimed ahead (a claim carries their bodies: ~2 MB at 1 KB)."""


class Claimer:
    """Keeps the ready buffer filled and hands it to ``start``.

    ``capacity()`` is how many requests the engines take at once now, ``in_flight()`` how
    many run now, ``start(ready)`` starts requests from
    the front of the buffer while slots are free, and ``paused_for()`` is how long every
    engine is known to be down (0 while one is up). The owner calls
    :meth:`request_finished` each time a request ends.
    """

    def __init__(
        self,
        db: Pool,
        *,
        owner: str,
        pool: str,
        takes_spot: bool,
        capacity: Callable[[], int],
        poll_seconds: float,
        listen_url: str | None,
        metrics: WorkerMetrics | None,
        in_flight: Callable[[], int],
        start: Callable[[deque[ClaimedRequest]], None],
        paused_for: Callable[[], float],
        location: str | None = None,
        fair_share: bool = True,
    ) -> None:
        self._db = db
        self._owner = owner
        self._capacity = capacity
        self._poll_seconds = poll_seconds
        self._listen_url = listen_url
        self._metrics = metrics
        self._in_flight = in_flight
        self._start = start
        self._paused_for = paused_for
        pools = [pool]
        if takes_spot and pool != "spot":
            pools.append("spot")
        self._cursors = [
            queue.QueueCursor(p, location=location, fair_share=fair_share) for p in pools
        ]
        self._ready: deque[ClaimedRequest] = deque()
        self.max_prefetch = PREFETCH_MAX
        self.prefetch = self.min_prefetch
        """Claimed requests to keep ready beyond the running ones: adapted by
        :meth:`adapt_prefetch` so that engine slots do not wait for claims."""
        self._finished = 0
        """Requests finished here so far (for the completion rate)."""
        self._slot_free = asyncio.Event()
        self._queued = asyncio.Event()
        """Set by a queue notification (:meth:`listen`): requests may be claimable."""

    @property
    def min_prefetch(self) -> int:
        """Half the requests the engines take at once now (their limits move)."""
        return min(self.max_prefetch, max(1, self._capacity() // 2))

    def request_finished(self) -> None:
        """A request ended: refill its slot from the buffer, and wake the claim loop
        only once the buffer is half used (to top it up in one claim)."""
        self._finished += 1
        self._start(self._ready)
        if len(self._ready) <= self.prefetch // 2:
            self._slot_free.set()

    def take_ready(self) -> list[ClaimedRequest]:
        """Empty the buffer: its requests, claimed and never started, for release."""
        unstarted = list(self._ready)
        self._ready.clear()
        return unstarted

    def adapt_prefetch(self, finished: int, elapsed: float) -> None:
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

    async def _claim(self, n: int) -> list[ClaimedRequest]:
        """Own pool first; spot-pool work fills the rest when ``takes_spot``."""
        claimed: list[ClaimedRequest] = []
        async with self._db.connection() as conn:
            for cursor in self._cursors:
                claimed += await cursor.claim(conn, owner=self._owner, n=n - len(claimed))
                if len(claimed) >= n:
                    break
        return claimed

    async def run(self, stop: asyncio.Event) -> None:
        """Claim until ``stop`` is set."""
        idle = self._poll_seconds / 8
        last_claim, last_finished = time.monotonic(), self._finished
        while not stop.is_set():
            paused = self._paused_for()
            if paused > 0:  # every engine is unreachable: claiming would only churn
                await wait_any(stop, timeout=paused)
                continue
            running, capacity = self._in_flight(), self._capacity()
            wanted = capacity + self.prefetch - running - len(self._ready)
            # top up in batches: claim when a slot is free or half the buffer is used
            if wanted < (self.prefetch + 1) // 2 and running >= capacity:
                self._slot_free.clear()
                await wait_any(stop, self._slot_free, timeout=self._poll_seconds)
                continue
            self._queued.clear()  # a notification from now on wakes the idle wait below
            try:
                claimed = await self._claim(wanted)
            except (psycopg.Error, OSError) as exc:
                log.warning("claim failed (%s); retrying", exc)
                await wait_any(stop, timeout=min(5.0, idle * 4))
                idle = min(self._poll_seconds, idle * 2)
                continue
            now = time.monotonic()
            self.adapt_prefetch(self._finished - last_finished, now - last_claim)
            last_claim, last_finished = now, self._finished
            self._ready.extend(claimed)
            self._start(self._ready)
            if self._metrics and claimed:
                self._metrics.claimed.inc(len(claimed))
            if claimed:
                idle = self._poll_seconds / 8
            else:
                await wait_any(stop, self._queued, timeout=idle)
                idle = min(self._poll_seconds, idle * 2)

    async def listen(self, done: asyncio.Event) -> None:
        """LISTEN for requests becoming claimable and wake the idle claim loop at once. A
        hint only: a lost notification or connection costs at most one poll interval."""
        url = self._listen_url or self._db.conninfo
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
            await wait_any(done, timeout=delay)
            delay = min(10.0, delay * 2)
