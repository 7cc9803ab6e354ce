"""Adaptive concurrency: how many requests to keep in flight on one engine replica.

An engine batches what it is sent, so throughput grows with the requests in flight until
the engine is full; past that point more in flight only adds queueing (latency grows in
proportion, throughput stays) and, behind a gateway or a provider, 429s. The best count
depends on the model, the GPU, the request mix and on whoever else uses the engine, so it
is measured, not configured: the configured ``max_in_flight`` is a ceiling.

The rule (pure: no clock, no I/O; ``now`` is passed in; times in seconds):

- Samples are grouped in *windows* of about one round of the current limit (at least
  ``min_window`` samples and ``limit / 2``), so each decision sees the effect of the
  previous one. A window's latency is the median of its samples (robust to a few long
  requests).
- The *baseline* is the lowest window latency seen, kept while some window within
  ``baseline_seconds`` ran near it: what a request costs with little queueing. A baseline
  that expires because every recent window was loaded is re-measured by a *probe*: one
  window at a quarter of the limit, counting only requests sent during it (as BBR's
  ProbeRTT), so a baseline does not outlive a change of the engine (or of the request
  mix). A quarter, not a half: past its full size an engine's latency grows in
  proportion to what it is sent, so a probe at half would measure a queue and let the
  limit ratchet up. Probes come at most every ``baseline_seconds`` and at least 50
  round trips apart, so they cost about 1 % of throughput.
- Latency within ``fast_ratio`` of the baseline: the engine is far from full; the limit
  doubles (slow start). Within ``tolerance`` times the baseline: it grows by its
  square root (additive increase, as Netflix's gradient limiter's queue allowance), and
  by one per window near the limit at which the engine last refused work (within
  ``baseline_seconds``), as TCP CUBIC slows down near its last loss.
  Above: it shrinks in proportion, ``limit * tolerance * baseline / latency`` (at least
  halving at most), which for a full engine is the limit that meets the bound. So the
  limit settles where throughput is highest with latency at most ``tolerance`` times the
  unloaded latency.
- Latency alone never takes the limit below 2: with one request running and one waiting
  an engine never waits for the next to arrive, and an engine that serves one at a time
  (its latency doubles from 1 to 2 in flight) would otherwise be left idle for every
  round trip. An overload answer (429, 503) or a timeout cuts the limit by ``backoff`` at
  once, down to 1, and a new window starts.
- Each window counts only requests sent after it began: answers to requests sent under
  an older limit (a burst of 429s, the queue a cut leaves behind) say nothing about the
  new one, so one event never cuts twice. At most one change per round trip, as in TCP.
- The limit only grows when the window used it (the most in flight reached
  ``used_share`` of it): a worker with too little work must not raise a limit it never
  tried.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    ceiling: int
    """The configured ``max_in_flight``: the limit never exceeds it."""
    initial: int = 8
    """The limit before anything is measured."""
    tolerance: float = 2.0
    """The latency bound, as a multiple of the baseline (unloaded) latency."""
    fast_ratio: float = 1.25
    """Below this multiple of the baseline the engine is far from full: grow fast."""
    backoff: float = 0.7
    """Multiplicative decrease on an overload answer or a timeout."""
    min_window: int = 4
    """Fewest samples in a window."""
    baseline_seconds: float = 60.0
    """How long a baseline measurement stays valid."""
    used_share: float = 0.8
    """A window grows the limit only if the most in flight reached this share of it."""

    def validate(self) -> None:
        if self.ceiling < 1:
            raise ValueError("ceiling must be at least 1")
        if not 1.0 < self.fast_ratio <= self.tolerance:
            raise ValueError("need 1 < fast_ratio <= tolerance")
        if not 0.0 < self.backoff < 1.0:
            raise ValueError("backoff must be between 0 and 1")


class AdaptiveLimit:
    """The in-flight limit of one replica; feed it every finished request."""

    def __init__(self, config: LimiterConfig) -> None:
        config.validate()
        self.config = config
        self._limit = float(min(config.ceiling, max(1, config.initial)))
        self._samples: list[float] = []
        self._window_at = -math.inf
        """When the current window began: answers to requests sent before are ignored."""
        self._peak = 0
        self._baseline: float | None = None
        self._baseline_at = 0.0
        self._probing = False
        self._probe_from = 0.0
        self._overload: tuple[float, float] | None = None
        """(the limit when the engine last refused work, when): growth slows near it."""

    @property
    def limit(self) -> int:
        """Requests that may be in flight now (at least 1)."""
        if self._probing:
            return max(1, math.floor(self._probe_from / 4))
        return max(1, math.floor(self._limit))

    @property
    def baseline(self) -> float | None:
        return self._baseline

    def started(self, in_flight: int) -> None:
        """A request was sent; ``in_flight`` counts it."""
        self._peak = max(self._peak, in_flight)

    def finished(self, now: float, latency: float, *, overloaded: bool = False) -> None:
        """A request sent at ``now - latency`` ended at ``now``; ``overloaded`` for a 429,
        a 503 or a timeout. Errors that say nothing about load (a dropped connection, an
        unreachable engine) should not be fed at all."""
        cfg = self.config
        if now - latency < self._window_at:
            return  # sent before the last change: says nothing about the current limit
        if overloaded:
            if self._probing:
                self._probing, self._limit = False, self._probe_from
            self._overload = (self._limit, now)
            self._limit = max(1.0, self._limit * cfg.backoff)
            self._samples, self._peak, self._window_at = [], 0, now
            return
        self._samples.append(latency)
        if len(self._samples) < max(cfg.min_window, self.limit // 2):
            return
        self._close_window(now, statistics.median(self._samples))

    def _close_window(self, now: float, latency: float) -> None:
        cfg = self.config
        was_probing, used = self._probing, self._peak >= cfg.used_share * self.limit
        self._samples, self._peak, self._window_at = [], 0, now
        if was_probing:
            self._probing = False
            self._limit = self._probe_from
        expired = now - self._baseline_at > max(cfg.baseline_seconds, 50 * latency)
        if self._baseline is None or latency <= self._baseline or (expired and was_probing):
            self._baseline, self._baseline_at = latency, now
        elif latency <= cfg.fast_ratio * self._baseline:
            self._baseline_at = now  # a window ran unloaded: the baseline still holds
        elif expired:
            # every window since the baseline was set ran loaded: measure it again
            self._probing, self._probe_from = True, self._limit
            return
        if was_probing:
            return
        baseline = self._baseline
        if self._overload is not None and now - self._overload[1] > cfg.baseline_seconds:
            self._overload = None
        if latency > cfg.tolerance * baseline:
            floor = min(2.0, float(cfg.ceiling))  # one running and one waiting: never idle
            cut = self._limit * max(0.5, cfg.tolerance * baseline / latency)
            self._limit = max(min(floor, self._limit), cut)
        elif not used:
            pass
        elif self._overload is None and latency <= cfg.fast_ratio * baseline:
            self._limit = min(float(cfg.ceiling), self._limit * 2.0)
        elif self._overload is not None and self._limit >= 0.9 * self._overload[0]:
            self._limit = min(float(cfg.ceiling), self._limit + 1.0)  # near where it refused
        else:
            self._limit = min(float(cfg.ceiling), self._limit + math.sqrt(self._limit))


class FixedLimit:
    """A limit that never moves (``concurrency = "fixed"``, and engines passed in by code)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.baseline: float | None = None

    def started(self, in_flight: int) -> None:
        pass

    def finished(self, now: float, latency: float, *, overloaded: bool = False) -> None:
        pass


Limit = AdaptiveLimit | FixedLimit
