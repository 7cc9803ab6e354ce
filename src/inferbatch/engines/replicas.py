"""The replicas of one engine: which one a request goes to, and which are up.

A model may be served by several replicas of an engine (a list of URLs, or one DNS name
that resolves to all of them, as a Kubernetes headless Service does). Each replica has its
own in-flight limit (:mod:`inferbatch.engines.limiter`), its own health and its own GPU
time clock (:mod:`inferbatch.worker.gputime`).

Where a request goes:

- A request with a prompt-prefix key (see :mod:`inferbatch.scheduler.prefix`) goes to the
  replica that ranks highest for that key among those with a free slot (rendezvous
  hashing, stable across workers and processes), so requests that share a prefix meet
  the same prefix cache, and a hot prefix that fills its replica spills over to the next
  ranked ones.
- Any other request goes to the replica with the most free slots.
- A replica that could not be reached gets no new work for a pause that doubles with each
  failure in a row (up to ``DOWN_MAX_PAUSE``); after the pause one request at a time is let
  through as a probe until one succeeds. The executor sends the requests a dead replica
  dropped to another replica within the same attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from inferbatch.engines.client import Engine, EngineResponse
from inferbatch.engines.limiter import FixedLimit, Limit
from inferbatch.worker.gputime import ShareClock

log = logging.getLogger(__name__)

DOWN_MAX_PAUSE = 15.0
"""Longest pause before a replica that could not be reached is tried again."""
DISCOVER_SECONDS = 15.0
"""How often a DNS name is resolved again for its replicas."""


@dataclass(eq=False)
class Replica:
    engine: Engine
    limit: Limit
    share: ShareClock = field(default_factory=ShareClock)
    running: int = 0
    down_until: float = 0.0
    failures: int = 0
    """Failures in a row; while > 0 only one request at a time is let through."""
    removed: bool = False
    """No longer among the addresses of its DNS name: gets no new work."""

    @property
    def name(self) -> str:
        return self.engine.name

    def allowance(self, now: float) -> int:
        """Requests it takes at once now: none while down or removed, one while probing
        after a failure, else its limit."""
        if self.removed or now < self.down_until:
            return 0
        return 1 if self.failures else self.limit.limit

    def free(self, now: float) -> int:
        return self.allowance(now) - self.running


def rendezvous(prefix_key: int, name: str) -> int:
    """The rank of replica ``name`` for ``prefix_key`` (highest wins); the same in every
    process, so every worker sends a prefix to the same replica."""
    digest = hashlib.blake2b(f"{prefix_key}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_all(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA), sorted."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def with_address(url: str, address: str) -> str:
    """``url`` with its host replaced by ``address`` (bracketed when IPv6)."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


class ReplicaSet:
    """An engine as a worker sees it: one or more replicas serving the same models.

    ``make(url)`` builds a replica for a discovered address (DNS discovery only).
    """

    def __init__(
        self,
        name: str,
        replicas: Sequence[Replica],
        *,
        max_in_flight: int,
        discover_url: str | None = None,
        make: Callable[[str], Replica] | None = None,
        resolver: Resolver = resolve_all,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.max_in_flight = max_in_flight
        """The ceiling of each replica's in-flight limit."""
        self.replicas: list[Replica] = list(replicas)
        self._discover_url = discover_url
        self._make = make
        self._resolver = resolver
        self._clock = clock
        self._discovered_at: float | None = None
        self._discovering: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    @classmethod
    def single(cls, engine: Engine) -> ReplicaSet:
        """One replica at a fixed limit: an engine passed in by code (tests, benchmarks)."""
        replica = Replica(engine, FixedLimit(engine.max_in_flight))
        return cls(engine.name, [replica], max_in_flight=engine.max_in_flight)

    # -- capacity and health -------------------------------------------------------------

    def capacity(self) -> int:
        """Requests this engine takes at once now: the limits of the replicas not known
        to be down."""
        now = self._clock()
        return sum(r.allowance(now) for r in self.replicas)

    @property
    def ceiling(self) -> int:
        """The most it could ever take (every replica at its ceiling)."""
        return self.max_in_flight * max(1, self.live)

    def down_for(self) -> float:
        """Seconds until some replica is worth trying (0 while one is up)."""
        now = self._clock()
        live = [r for r in self.replicas if not r.removed]
        if not live:
            return DOWN_MAX_PAUSE if self._discover_url else 0.0
        return max(0.0, min(r.down_until for r in live) - now)

    def mark_down(self, replica: Replica) -> None:
        replica.failures += 1
        pause = min(DOWN_MAX_PAUSE, 0.25 * 2.0 ** (replica.failures - 1))
        replica.down_until = self._clock() + pause
        if replica.failures == 1:
            log.warning("engine replica %s is unreachable; its work goes elsewhere", replica.name)

    def mark_up(self, replica: Replica) -> None:
        if replica.failures:
            log.info("engine replica %s answers again", replica.name)
        replica.failures = 0
        replica.down_until = 0.0

    def has_untried(self, tried: Sequence[Replica]) -> bool:
        now = self._clock()
        return any(r not in tried and not r.removed and now >= r.down_until for r in self.replicas)

    # -- placing requests ----------------------------------------------------------------

    def _choose(self, prefix_key: int, tried: Sequence[Replica]) -> Replica | None:
        now = self._clock()
        free = [r for r in self.replicas if r not in tried and r.free(now) > 0]
        if not free:
            return None
        if prefix_key and len(free) > 1:
            return max(free, key=lambda r: rendezvous(prefix_key, r.name))
        return max(free, key=lambda r: (r.free(now), -r.running))

    async def acquire(self, key: int, prefix_key: int, tried: Sequence[Replica]) -> Replica | None:
        """A replica with a free slot for request ``key``, not one of ``tried``; waits while
        every such replica is full. None when every replica is down or was tried."""
        discovering = self._maybe_discover()
        if discovering is not None and not self.replicas:
            await asyncio.shield(discovering)  # nothing known yet: wait for the first answer
        async with self._changed:
            while True:
                replica = self._choose(prefix_key, tried)
                if replica is not None:
                    replica.running += 1
                    replica.limit.started(replica.running)
                    replica.share.start(key)
                    return replica
                if not self.has_untried(tried):
                    return None  # every replica is down or was tried: waiting is useless
                # woken by a release; a replica coming back after its pause wakes no one
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=0.25)

    async def release(
        self,
        replica: Replica,
        key: int,
        latency: float,
        *,
        overloaded: bool = False,
        informative: bool = True,
    ) -> float:
        """Request ``key`` left ``replica`` after ``latency`` seconds; ``overloaded`` when the
        replica refused it for load or timed out, not ``informative`` when how it ended says
        nothing about load (a dropped connection). Returns the GPU-seconds it used there."""
        replica.running -= 1
        gpu_seconds = replica.share.stop(key)
        if informative or overloaded:
            replica.limit.finished(self._clock(), latency, overloaded=overloaded)
        async with self._changed:
            self._changed.notify_all()
        if replica.removed and replica.running == 0 and replica in self.replicas:
            self.replicas.remove(replica)
            await replica.engine.aclose()
        return gpu_seconds

    # -- discovery -----------------------------------------------------------------------

    def _maybe_discover(self) -> asyncio.Task[None] | None:
        """Start resolving the DNS name again when it is due; the lookup under way."""
        if self._discover_url is None or self._make is None:
            return None
        now = self._clock()
        due = self._discovered_at is None or now - self._discovered_at >= DISCOVER_SECONDS
        if due and (self._discovering is None or self._discovering.done()):
            self._discovered_at = now
            self._discovering = asyncio.create_task(self.discover(), name=f"discover-{self.name}")
        return self._discovering

    async def discover(self) -> None:
        """Resolve the DNS name again: new addresses become replicas, vanished ones get no
        new work and are closed once idle. A failed lookup keeps what is known."""
        assert self._discover_url is not None and self._make is not None
        parts = urlsplit(self._discover_url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await self._resolver(host, port)
        except OSError as exc:
            log.warning("resolving %s failed (%s); keeping %d replicas", host, exc, self.live)
            return
        urls = {with_address(self._discover_url, a) for a in addresses}
        known = {r.name: r for r in self.replicas}
        for url in sorted(urls - known.keys()):
            self.replicas.append(self._make(url))
            log.info("engine %s: replica %s added", self.name, url)
        for name, replica in known.items():
            if name not in urls and not replica.removed:
                replica.removed = True
                log.info("engine %s: replica %s removed", self.name, name)
                if replica.running == 0:
                    self.replicas.remove(replica)
                    await replica.engine.aclose()
            elif name in urls:
                replica.removed = False
        async with self._changed:
            self._changed.notify_all()

    @property
    def live(self) -> int:
        """Replicas that take new work when up (not removed from DNS)."""
        return sum(1 for r in self.replicas if not r.removed)

    # -- the Engine protocol, for callers that need no placement ---------------------------

    async def call(self, url: str, body: bytes) -> EngineResponse:
        """Send one request to the freest replica (no limits kept: for probes and tools)."""
        now = self._clock()
        live = [r for r in self.replicas if not r.removed] or self.replicas
        replica = max(live, key=lambda r: (now >= r.down_until, r.free(now)))
        return await replica.engine.call(url, body)

    async def models(self) -> list[str]:
        for replica in self.replicas:
            names = await replica.engine.models()
            if names:
                return names
        return []

    async def aclose(self) -> None:
        if self._discovering is not None:
            self._discovering.cancel()
        for replica in self.replicas:
            await replica.engine.aclose()
