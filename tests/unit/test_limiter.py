"""The adaptive in-flight limit against model engines (pure: latencies are computed)."""

from __future__ import annotations

import pytest

from inferbatch.engines.limiter import AdaptiveLimit, FixedLimit, LimiterConfig

pytestmark = pytest.mark.unit


def _slot_engine_latency(in_flight: int, slots: int, service: float = 1.0) -> float:
    """A FIFO engine with ``slots`` sequences at once: past them, requests queue."""
    return service * max(1.0, in_flight / slots)


def _drive(
    limit: AdaptiveLimit,
    slots: int,
    rounds: int,
    *,
    start: float = 0.0,
    queue_bound: int | None = None,
) -> tuple[float, list[int], int]:
    """Run ``rounds`` rounds with the limit fully used; returns (time, limits, 429s)."""
    now, limits, rejected = start, [], 0
    for _ in range(rounds):
        n = limit.limit
        for i in range(1, n + 1):
            limit.started(i)
        latency = _slot_engine_latency(n, slots)
        now += latency
        over = 0 if queue_bound is None else max(0, n - slots - queue_bound)
        for _ in range(over):
            limit.finished(now, 0.01, overloaded=True)
        for _ in range(n - over):
            limit.finished(now, latency)
        rejected += over
        limits.append(limit.limit)
    return now, limits, rejected


def test_the_limit_grows_to_fill_the_engine_and_stays_within_the_latency_bound() -> None:
    limit = AdaptiveLimit(LimiterConfig(ceiling=1000, tolerance=2.0))
    _, limits, _ = _drive(limit, slots=64, rounds=80)
    settled = sorted(limits[-40:])
    assert settled[1] >= 64  # the engine stays full (a probe may dip once)
    assert settled[-1] <= 2 * 64 + 16  # latency at most ~the bound (2x unloaded)


def test_the_ceiling_holds() -> None:
    limit = AdaptiveLimit(LimiterConfig(ceiling=20))
    _, limits, _ = _drive(limit, slots=64, rounds=40)
    assert max(limits) == 20 and limits[-1] == 20


def test_the_limit_follows_a_halved_engine_and_backs_off_on_429() -> None:
    limit = AdaptiveLimit(LimiterConfig(ceiling=1000))
    now, _, _ = _drive(limit, slots=64, rounds=60)
    now, limits, rejected = _drive(limit, slots=32, rounds=10, start=now, queue_bound=16)
    assert limits[-1] <= 32 + 16  # backed off to what the engine accepts
    _, limits, rejected = _drive(limit, slots=32, rounds=100, start=now, queue_bound=16)
    assert min(limits) >= 32  # the smaller engine is still kept full
    assert rejected < 0.01 * sum(limits)  # near its bound the limit creeps: few 429s


def test_the_limit_grows_again_when_the_engine_grows() -> None:
    limit = AdaptiveLimit(LimiterConfig(ceiling=1000))
    now, _, _ = _drive(limit, slots=16, rounds=40)
    _, limits, _ = _drive(limit, slots=64, rounds=80, start=now)
    assert sorted(limits[-20:])[1] >= 64


def test_a_limit_that_is_not_used_does_not_grow() -> None:
    limit = AdaptiveLimit(LimiterConfig(ceiling=100, initial=8))
    for _ in range(50):  # only 2 requests in flight at a time: latency is flat
        limit.started(2)
        limit.finished(0.0, 1.0)
    assert limit.limit == 8


def test_an_expired_baseline_is_measured_again_at_a_lower_limit() -> None:
    config = LimiterConfig(ceiling=1000, baseline_seconds=30.0)
    limit = AdaptiveLimit(config)
    now, _, _ = _drive(limit, slots=64, rounds=40)
    assert limit.baseline == pytest.approx(1.0)
    # the engine became twice as slow per request: the old baseline cannot be met
    probed = False
    for _ in range(200):
        n = limit.limit
        for i in range(1, n + 1):
            limit.started(i)
        latency = _slot_engine_latency(n, 64, service=2.0)
        now += latency
        for _ in range(n):
            limit.finished(now, latency)
        probed = probed or n <= 40
    assert probed
    assert limit.baseline == pytest.approx(2.0)
    assert limit.limit >= 64


def test_answers_to_requests_sent_before_a_cut_do_not_cut_again() -> None:
    limit = AdaptiveLimit(LimiterConfig(ceiling=100, initial=40))
    for i in range(30):  # a burst of 429s to requests all sent at t=10
        limit.finished(10.5 + i * 0.01, 0.5 + i * 0.01, overloaded=True)
    assert limit.limit == 28  # 40 * 0.7, once
    limit.finished(12.0, 0.5, overloaded=True)  # sent after the cut: new evidence
    assert limit.limit == 19


def test_bad_configurations_are_refused() -> None:
    for config in (
        LimiterConfig(ceiling=0),
        LimiterConfig(ceiling=4, backoff=1.0),
        LimiterConfig(ceiling=4, tolerance=1.1, fast_ratio=1.25),
    ):
        with pytest.raises(ValueError):
            AdaptiveLimit(config)


def test_a_fixed_limit_never_moves() -> None:
    limit = FixedLimit(12)
    limit.finished(0.0, 100.0, overloaded=True)
    assert limit.limit == 12


def test_an_engine_that_serves_one_at_a_time_keeps_one_request_waiting() -> None:
    limit = AdaptiveLimit(LimiterConfig(ceiling=8, initial=1))
    _, limits, _ = _drive(limit, slots=1, rounds=40)
    assert min(limits[5:]) == 2  # latency doubles at 2, but 1 would idle the engine
    assert max(limits[5:]) <= 4
    for at in (1e6, 2e6, 3e6):  # refusals, each to a request sent after the last cut
        limit.finished(at, 0.01, overloaded=True)
    assert limit.limit == 1  # refusals still go below
