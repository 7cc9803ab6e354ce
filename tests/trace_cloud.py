"""A make-believe cloud for end-to-end tests: replays a real spot trace, time-compressed,
against a ``Stack``, and autoscales its dedicated pool from the scheduler's published target.

- Spot: while the trace has capacity, spot worker processes run (``spot_fleet`` at the
  trace's peak, as in ``inferbatch.simulate``). When capacity goes away, each victim gets
  SIGTERM the trace's interruption notice (compressed) before the drop, as a cloud's
  notice, and is killed if it still runs ``kill_grace_s`` after the drop (the grace covers
  the process's own exit, which the compressed notice is too short for).
- Dedicated: the controller follows ``dedicated_workers_desired`` (published by the
  escalate duty) like KEDA or an HPA would. A new worker process is started
  ``cold_start_s`` after it was asked for (its own start-up adds to that); when the target
  drops, workers still being asked for are cancelled first, then the newest get SIGTERM.

Times: ``seconds_per_hour`` wall seconds replay one trace hour.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import dict_row

from inferbatch.db import escalation as escalation_rows
from inferbatch.simulate.traces import SpotTrace
from tests.stack import Stack


def outage_window(trace: SpotTrace, up_hours: float, down_hours: float) -> float:
    """Trace seconds of the first moment that has at least ``up_hours`` of spot capacity
    before it and is followed by an outage (no capacity) of at least ``down_hours``;
    returns where the replay should start, ``up_hours`` before the outage."""
    gap = trace.gap_seconds
    up_ticks, down_ticks = round(up_hours * 3600 / gap), round(down_hours * 3600 / gap)
    counts = trace.counts
    for i in range(up_ticks, len(counts) - down_ticks):
        if (
            counts[i] == 0
            and all(c > 0 for c in counts[i - up_ticks : i])
            and not any(counts[i : i + down_ticks])
        ):
            return (i - up_ticks) * gap
    raise LookupError(f"{trace.name}: no {up_hours} h up then {down_hours} h down")


@dataclass
class Event:
    at: float
    """Wall seconds since the replay started."""
    what: str


@dataclass
class TraceCloud:
    stack: Stack
    trace: SpotTrace
    start_s: float
    """Where in the trace (trace seconds) the replay starts."""
    seconds_per_hour: float
    spot_fleet: int = 1
    cold_start_s: float = 1.0
    poll_s: float = 0.05
    kill_grace_s: float = 1.0
    """How long after the drop a spot worker that got its notice may still run."""
    events: list[Event] = field(default_factory=list)
    desired: list[tuple[float, int]] = field(default_factory=list)
    """Each change of the published dedicated target: (wall seconds, count)."""
    notices: list[float] = field(default_factory=list)
    """Wall seconds of each spot interruption notice."""
    _spot: list[str] = field(default_factory=list)
    _doomed: dict[str, float] = field(default_factory=dict)
    """Spot workers that got their notice -> wall time of the drop."""
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

    def spot_capacity(self, wall: float) -> int:
        """Spot workers the trace allows ``wall`` seconds into the replay."""
        index = int((self.start_s + wall * self.speed) // self.trace.gap_seconds)
        return self.trace.workers(index, self.spot_fleet)

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
                    self._spot_step()
                    desired = await escalation_rows.published(
                        conn, escalation_rows.DESIRED_DEDICATED
                    )
                    self._dedicated_step(int(desired or 0))
                    self._reap()
                    await asyncio.sleep(self.poll_s)
        except BaseException as exc:  # surfaced by close()
            self._error = exc

    def _spawn(self, pool: str) -> str:
        self._count += 1
        name = f"cloud-{pool}-{self._count}"
        self.stack.spawn(name, ["worker", "--pool", pool])
        return name

    def _terminate(self, name: str) -> None:
        proc = self.stack.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        self._stopping.append(proc)

    def _spot_step(self) -> None:
        now = self.now()
        notice = self.trace.notice_seconds / self.speed
        # a victim gets its notice ``notice`` before the drop
        soon = self.spot_capacity(now + notice)
        live = [n for n in self._spot if n not in self._doomed]
        while len(live) > soon:
            victim = live.pop()
            self._doomed[victim] = now + notice
            self.stack.procs[victim].send_signal(signal.SIGTERM)
            self.notices.append(round(now, 2))
            self.log(f"spot interruption notice to {victim}")
        for name, drop in list(self._doomed.items()):
            proc = self.stack.procs[name]
            if proc.poll() is not None:
                del self._doomed[name], self.stack.procs[name]
                self._spot.remove(name)
            elif now > drop + self.kill_grace_s:
                proc.kill()
                self.log(f"spot {name} killed at the drop")
        while len(live) < min(soon, self.spot_capacity(now)):
            name = self._spawn("spot")
            live.append(name)
            self._spot.append(name)
            self.log(f"spot capacity: started {name}")

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
