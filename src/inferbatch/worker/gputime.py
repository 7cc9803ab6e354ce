"""GPU time per request: an engine's busy time split among the requests it serves at once.

Over any interval in which ``n`` requests are in flight on one engine replica, each of them
is charged ``1 / n`` of the interval (times the replica's GPU count), so the requests'
charges add up to exactly the time the replica had work from this worker, with no gap and
nothing counted twice. This is the share clock of fair queueing: a virtual time that
advances at ``1 / n`` of the wall clock; a request's charge is the virtual time that passed
between its start and its end. Units: seconds (GPU-seconds after the GPU factor).

Several workers that send to one engine each count their own busy time, so their sum can
exceed the engine's wall time; one worker per engine (the usual deployment) counts it
exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ShareClock:
    def __init__(self, gpus: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.gpus = gpus
        self._clock = clock
        self._virtual = 0.0
        self._at = clock()
        self._n = 0
        self._starts: dict[int, float] = {}

    def _advance(self) -> None:
        now = self._clock()
        if self._n:
            self._virtual += (now - self._at) / self._n
        self._at = now

    def start(self, key: int) -> None:
        """``key`` went in flight."""
        self._advance()
        self._n += 1
        self._starts[key] = self._virtual

    def stop(self, key: int) -> float:
        """``key`` left; returns its GPU-seconds (0 for a key that never started)."""
        started = self._starts.pop(key, None)
        if started is None:
            return 0.0
        self._advance()
        self._n -= 1
        return (self._virtual - started) * self.gpus

    @property
    def in_flight(self) -> int:
        return self._n
