"""A make-believe cloud for end-to-end tests: replays real spot traces, time-compressed,
against a ``Stack``, and autoscales its pools from the scheduler's published targets.

- Spot, one zone per trace (``SpotZone``). When capacity goes away, each victim gets
  SIGTERM the trace's interruption notice (compressed) before the drop, as a cloud's
  notice, and is killed if it still runs ``kill_grace_s`` after the drop (the grace covers
  the process's own exit, which the compressed notice is too short for).
  - A zone without a location is the single spot pool: while the trace has capacity, spot
    worker processes run (``fleet`` at the trace's peak, as in ``inferbatch.simulate``).
  - A zone with a location is one per-location autoscaler: it follows that location's
    entry of ``spot_workers_desired_by_location`` (published by the escalate duty), within
    the trace's capacity. A worker asked for starts ``boot_s`` later with ``--location``,
    if the zone has capacity then; otherwise the ask stays open, as an unfulfilled spot
    request does. When the target drops, open asks are cancelled first, then the newest
    workers get SIGTERM (a scale-down, not an interruption).
- Dedicated: the controller follows ``dedicated_workers_desired`` like KEDA or an HPA
  would. A new worker process is started ``cold_start_s`` after it was asked for (its own
  start-up adds to that); when the target drops, workers still being asked for are
  cancelled first, then the newest get SIGTERM.

Times: ``seconds_per_hour`` wall seconds replay one trace hour.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import dict_row

from inferbatch.db import escalation as escalation_rows
from inferbatch.db import locations as location_rows
from inferbatch.simulate.traces import SpotTrace
from tests.stack import Stack


def outage_window(
    trace: SpotTrace, up_hours: float, down_hours: float, others: Sequence[SpotTrace] = ()
) -> float:
    """Trace seconds of the first moment that has at least ``up_hours`` of spot capacity
    before it and is followed by an outage (no capacity) of at least ``down_hours``, while
    every trace of ``others`` has capacity throughout; returns where the replay should
    start, ``up_hours`` before the outage."""
    gap = trace.gap_seconds
    up_ticks, down_ticks = round(up_hours * 3600 / gap), round(down_hours * 3600 / gap)
    counts = trace.counts
    for i in range(up_ticks, len(counts) - down_ticks):
        if (
            counts[i] == 0
            and all(c > 0 for c in counts[i - up_ticks : i])
            and not any(counts[i : i + down_ticks])
            and all(
                all(c > 0 for c in o.counts[i - up_ticks : i + down_ticks])
                and len(o.counts) >= i + down_ticks
                for o in others
            )
        ):
            return (i - up_ticks) * gap
    raise LookupError(f"{trace.name}: no {up_hours} h up then {down_hours} h down")


@dataclass
class Event:
    at: float
    """Wall seconds since the replay started."""
    what: str


@dataclass
class SpotZone:
    trace: SpotTrace
    start_s: float
    """Where in the trace (trace seconds) the replay starts."""
    location: str | None = None
    """The workers' ``--location``; None: the single spot pool, which follows the trace."""
    fleet: int = 1
    boot_s: float = 0.0
    """Located zones: wall seconds from an ask to the worker process starting."""
    live: list[str] = field(default_factory=list)
    doomed: dict[str, float] = field(default_factory=dict)
    """Workers that got their notice -> wall time of the drop."""
    asks: list[float] = field(default_factory=list)
    """Located zones: open asks -> wall time from which they may start."""

    @property
    def label(self) -> str:
        return self.location or self.trace.name


@dataclass
class TraceCloud:
    stack: Stack
    zones: list[SpotZone]
    seconds_per_hour: float
    cold_start_s: float = 1.0
    poll_s: float = 0.05
    kill_grace_s: float = 1.0
    """How long after the drop a spot worker that got its notice may still run."""
    events: list[Event] = field(default_factory=list)
    desired: list[tuple[float, int]] = field(default_factory=list)
    """Each change of the published dedicated target: (wall seconds, count)."""
    notices: list[tuple[float, str]] = field(default_factory=list)
    """Each spot interruption notice: (wall seconds, zone label)."""
    spot_starts: list[tuple[float, str]] = field(default_factory=list)
    """Each spot worker started: (wall seconds, zone label)."""
    scale_downs: list[tuple[float, str]] = field(default_factory=list)
    """Each spot worker stopped because its location's target dropped."""
    _asked: list[float] = field(default_factory=list)
    """Dedicated workers asked for and still cold-starting -> when they serve."""
    _dedicated: list[str] = field(default_factory=list)
    _stopping: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _count: int = 0
    _t0: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    @property
    def speed(self) -> float:
        """Trace seconds per wall second."""
        return 3600.0 / self.seconds_per_hour

    def spot_capacity(self, zone: SpotZone, wall: float) -> int:
        """Spot workers ``zone``'s trace allows ``wall`` seconds into the replay."""
        index = int((zone.start_s + wall * self.speed) // zone.trace.gap_seconds)
        return zone.trace.workers(index, zone.fleet)

    def now(self) -> float:
        return time.monotonic() - self._t0

    def log(self, what: str) -> None:
        self.events.append(Event(round(self.now(), 2), what))

    def start(self) -> TraceCloud:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for proc in self._stopping:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._error is not None:
            raise RuntimeError("the trace cloud failed") from self._error

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        url = self.stack.env["INFERBATCH_DATABASE_URL"]
        try:
            async with await psycopg.AsyncConnection.connect(
                url, autocommit=True, row_factory=dict_row
            ) as conn:
                while not self._stop.is_set():
                    state = await escalation_rows.published_all(conn)
                    by_location = state.get(location_rows.DESIRED_SPOT_BY_LOCATION) or {}
                    for zone in self.zones:
                        wanted = by_location.get(zone.location, 0) if zone.location else None
                        self._spot_step(zone, wanted)
                    self._dedicated_step(int(state.get(escalation_rows.DESIRED_DEDICATED) or 0))
                    self._reap()
                    await asyncio.sleep(self.poll_s)
        except BaseException as exc:  # surfaced by close()
            self._error = exc

    def _spawn(self, pool: str, location: str | None = None) -> str:
        self._count += 1
        name = f"cloud-{pool}-{location or 'any'}-{self._count}"
        where = ["--location", location] if location else []
        self.stack.spawn(name, ["worker", "--pool", pool, *where])
        return name

    def _terminate(self, name: str) -> None:
        proc = self.stack.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        self._stopping.append(proc)

    def _spot_step(self, zone: SpotZone, wanted: int | None) -> None:
        """One step of ``zone``: notices and kills at the trace's drops, then starts up to
        the trace's capacity (``wanted`` None) or to ``wanted`` within it."""
        now = self.now()
        notice = zone.trace.notice_seconds / self.speed
        # a victim gets its notice ``notice`` before the drop
        soon = self.spot_capacity(zone, now + notice)
        live = [n for n in zone.live if n not in zone.doomed]
        while len(live) > soon:
            victim = live.pop()
            zone.doomed[victim] = now + notice
            self.stack.procs[victim].send_signal(signal.SIGTERM)
            self.notices.append((round(now, 2), zone.label))
            self.log(f"spot interruption notice to {victim}")
        for name, drop in list(zone.doomed.items()):
            proc = self.stack.procs[name]
            if proc.poll() is not None:
                del zone.doomed[name], self.stack.procs[name]
                zone.live.remove(name)
            elif now > drop + self.kill_grace_s:
                proc.kill()
                self.log(f"spot {name} killed at the drop")
        capacity = min(soon, self.spot_capacity(zone, now))
        if wanted is None:
            while len(live) < capacity:
                live.append(self._start_spot(zone))
            return
        while len(live) + len(zone.asks) < wanted:
            zone.asks.append(now + zone.boot_s)
        while zone.asks and len(live) + len(zone.asks) > wanted:
            zone.asks.pop()
        while len(live) > wanted:
            name = live.pop()
            zone.live.remove(name)
            self._terminate(name)
            self.scale_downs.append((round(now, 2), zone.label))
            self.log(f"spot scale-down in {zone.label}: stopped {name}")
        for ready in [a for a in zone.asks if a <= now]:
            if len(live) >= capacity:
                break  # no capacity: the ask stays open
            zone.asks.remove(ready)
            live.append(self._start_spot(zone))

    def _start_spot(self, zone: SpotZone) -> str:
        name = self._spawn("spot", zone.location)
        zone.live.append(name)
        self.spot_starts.append((round(self.now(), 2), zone.label))
        self.log(f"spot capacity in {zone.label}: started {name}")
        return name

    def _dedicated_step(self, desired: int) -> None:
        now = self.now()
        if not self.desired or self.desired[-1][1] != desired:
            self.desired.append((round(now, 2), desired))
            self.log(f"dedicated workers desired: {desired}")
        while len(self._asked) + len(self._dedicated) < desired:
            self._asked.append(now + self.cold_start_s)
        while len(self._asked) + len(self._dedicated) > desired:
            if self._asked:
                self._asked.pop()
            else:
                name = self._dedicated.pop()
                self._terminate(name)
                self.log(f"dedicated scale-down: stopped {name}")
        for ready in [r for r in self._asked if r <= now]:
            self._asked.remove(ready)
            name = self._spawn("dedicated")
            self._dedicated.append(name)
            self.log(f"dedicated started {name}")

    def _reap(self) -> None:
        self._stopping = [p for p in self._stopping if p.poll() is None]
