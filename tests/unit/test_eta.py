"""The completion estimator and admission (inferbatch.policy.eta): pure, ``now`` passed in."""

from __future__ import annotations

import pytest

from inferbatch.policy.eta import (
    MIN_CHANGE_S,
    Capacity,
    ThroughputMeter,
    Work,
    admit,
    claim_order,
    estimate,
    format_window,
    moved,
    window_steps,
)

pytestmark = pytest.mark.unit

HOUR = 3600.0


def work(
    batch_id: str,
    queued: int,
    *,
    running: int = 0,
    service_s: float = 1.0,
    priority: int = 1,
    deadline_at: float = 24 * HOUR,
    created_at: float = 0.0,
) -> Work:
    return Work(batch_id, priority, deadline_at, created_at, queued, running, service_s)


def test_one_batch_on_busy_slots_takes_its_work_over_the_slots_plus_half_a_request() -> None:
    # 160 requests of 1 s on 16 slots: ten rounds; the last one ends half a request after
    # the fluid time, as the running requests' leftovers spread the starts
    assert estimate(100.0, [work("b", 160)], Capacity(16)) == {"b": pytest.approx(110.5)}


def test_fewer_requests_than_slots_still_take_one_service_time() -> None:
    assert estimate(0.0, [work("b", 3, service_s=5.0)], Capacity(16))["b"] == 5.0


def test_batches_share_slots_in_claim_order_instead_of_queueing_whole() -> None:
    early = work("early", 160, deadline_at=HOUR)
    late = work("late", 160, deadline_at=2 * HOUR)
    got = estimate(0.0, [late, early], Capacity(16))
    assert got["early"] == pytest.approx(10.5)
    # the later batch starts on the slots the earlier one frees: 20 rounds in all, not
    # the two batches' durations end to end (10.5 + 10.5)
    assert got["late"] == pytest.approx(20.5)


def test_a_higher_priority_batch_goes_first_whatever_its_deadline() -> None:
    normal = work("normal", 160, deadline_at=HOUR, created_at=0.0)
    urgent = work("urgent", 160, priority=10, deadline_at=24 * HOUR, created_at=50.0)
    assert [b.batch_id for b in claim_order([normal, urgent])] == ["urgent", "normal"]
    got = estimate(0.0, [normal, urgent], Capacity(16))
    assert got["urgent"] == pytest.approx(10.5) and got["normal"] == pytest.approx(20.5)


def test_equal_deadlines_serve_the_older_batch_first() -> None:
    older = work("older", 160, created_at=0.0)
    newer = work("newer", 160, created_at=10.0)
    got = estimate(0.0, [newer, older], Capacity(16))
    assert got["older"] < got["newer"]  # type: ignore[operator]


def test_requests_running_now_hold_their_slots_ahead_of_all_queued_work() -> None:
    # 16 running requests of a later batch: half a request each is left, ahead of the
    # earlier batch's queued work
    alone = estimate(0.0, [work("a", 160, deadline_at=HOUR)], Capacity(16))["a"]
    behind = estimate(
        0.0,
        [work("a", 160, deadline_at=HOUR), work("z", 0, running=16, deadline_at=2 * HOUR)],
        Capacity(16),
    )
    assert behind["a"] == pytest.approx(alone + 0.5)  # type: ignore[operator]
    # a batch with nothing queued ends with the last of its running requests
    assert behind["z"] == pytest.approx(16 / 17)


def test_no_worker_up_waits_for_the_dedicated_workers_asked_for() -> None:
    starting = Capacity(0, later=((240.0, 8), (240.0, 8)))
    assert estimate(0.0, [work("b", 160)], starting)["b"] == pytest.approx(250.5)


def test_no_worker_up_and_none_coming_is_unknown() -> None:
    assert estimate(0.0, [work("b", 160), work("c", 0, running=4)], Capacity(0)) == {
        "b": None,
        "c": None,
    }


def test_capacity_delivers_in_steps() -> None:
    cap = Capacity(10, later=((5.0, 10),))
    assert cap.delivery_time(30.0) == pytest.approx(3.0)
    assert cap.delivery_time(70.0) == pytest.approx(5.0 + 20.0 / 20.0)
    assert Capacity(0).delivery_time(1.0) is None
    assert Capacity(0).delivery_time(0.0) == 0.0


def test_a_slower_fleet_than_its_slots_stretches_the_estimate() -> None:
    measured = Capacity(16, efficiency=0.5)  # half the slot-seconds it has get delivered
    assert estimate(0.0, [work("b", 160)], measured)["b"] == pytest.approx(20.5)


def test_measured_throughput_corrects_a_wrong_service_time() -> None:
    # the prior says 30 s a request; they take 1 s: 16 slots settle 16 requests a second
    meter = ThroughputMeter()
    unsettled = 100_000
    for t in range(400):
        meter.observe(float(t), {"b": ("m", unsettled)}, 16)
        unsettled -= 16
    efficiency = meter.efficiency(lambda model: 30.0)
    assert efficiency == pytest.approx(30.0)
    got = estimate(0.0, [work("b", 160, service_s=30.0)], Capacity(16, efficiency=efficiency))
    # 160 requests at the measured 16 a second, whatever the service time says
    assert got["b"] == pytest.approx(10.5)


def test_the_meter_counts_whole_waves_from_a_settle_to_a_settle() -> None:
    # 16 slots of 1-s requests that finish in waves, at 0.9 s, 1.9 s, ...; observed every
    # quarter second
    meter = ThroughputMeter()

    def run(until: float) -> None:
        t = 0.0 if meter.last is None else meter.last[0] + 0.25
        while t <= until:
            waves = int(t + 0.1)  # waves finished by t
            meter.observe(t, {"b": ("m", 10_000 - 16 * waves)}, 16)
            t += 0.25

    run(2.5)
    assert meter.efficiency(lambda model: 1.0) is None  # one wave after the first: 16
    run(3.5)
    # a count over the 3.5 s observed would say 48 / (16 x 3.5) = 0.86; from the first
    # wave to the last it is exact
    assert meter.efficiency(lambda model: 1.0) == pytest.approx(1.0)


def test_the_meter_ignores_idle_slots_retries_and_new_batches() -> None:
    meter = ThroughputMeter()
    # fewer unsettled requests than slots: demand, not capacity
    for t in range(100):
        meter.observe(float(t), {"b": ("m", 10)}, 16)
    assert meter.efficiency(lambda model: 1.0) is None
    meter = ThroughputMeter()
    left = 5000
    for t in range(100):
        batches = {"b": ("m", left)}
        if t == 50:
            batches["new"] = ("m", 1000)  # ingested: not a settle
        if t > 50:
            batches["new"] = ("m", 1000 + t)  # retries re-queue: never a negative settle
        meter.observe(float(t), batches, 16)
        left -= 16
    assert meter.efficiency(lambda model: 1.0) == pytest.approx(1.0)


def test_the_meter_forgets_what_is_older_than_its_window() -> None:
    meter = ThroughputMeter(window_s=60.0)
    left = 100_000
    for t in range(200):
        meter.observe(float(t), {"b": ("m", left)}, 16)
        left -= 16 if t < 100 else 8  # the fleet slowed down half-way
    assert meter.efficiency(lambda model: 1.0) == pytest.approx(0.5)


def test_an_estimate_is_rewritten_only_when_it_moved_enough() -> None:
    now = 1000.0
    assert moved(None, now + 50, now) and moved(now + 50, None, now)
    assert not moved(None, None, now)
    assert not moved(now + 50, now + 50 + MIN_CHANGE_S / 2, now)
    assert moved(now + 50, now + 50 + MIN_CHANGE_S * 2, now)
    # ten hours left: a minute is noise
    assert not moved(now + 36_000, now + 36_060, now)


def test_admission_accepts_a_batch_that_fits() -> None:
    got = admit(
        0.0,
        [],
        priority=1,
        requests=160,
        service_s=1.0,
        window_s=HOUR,
        windows=window_steps(60.0, 30 * 86400.0),
        capacity=Capacity(16),
    )
    assert got.fits and got.finish_at == pytest.approx(10.5)


def test_admission_names_the_shortest_window_that_would_work() -> None:
    # 24 h of work on 8 dedicated workers of 4 slots: 32 slots, 32 x 90,000 slot-seconds
    requests = 32 * 25 * 3600 // 60
    got = admit(
        0.0,
        [],
        priority=1,
        requests=requests,
        service_s=60.0,
        window_s=24 * HOUR,
        windows=window_steps(60.0, 30 * 86400.0),
        capacity=Capacity(0, later=((240.0, 32),)),
    )
    assert not got.fits and got.finish_at == pytest.approx(240 + 25 * HOUR + 30.0)
    assert got.shortest_window_s == 26 * HOUR and format_window(got.shortest_window_s) == "26h"


def test_a_longer_window_queues_behind_more_work() -> None:
    # a batch due in 2 h holds 10 h of work: a new batch of half an hour fits in 1 h,
    # ahead of it; asked for 3 h it queues behind it, and 11 h (10.5 h, rounded up) works
    ahead = [work("big", 16 * 36_000, deadline_at=2 * HOUR)]
    common = {
        "priority": 1,
        "requests": 16 * 1800,
        "service_s": 1.0,
        "windows": window_steps(60.0, 30 * 86400.0),
        "capacity": Capacity(16),
    }
    assert admit(0.0, ahead, window_s=HOUR, **common).fits  # type: ignore[arg-type]
    late = admit(0.0, ahead, window_s=3 * HOUR, **common)  # type: ignore[arg-type]
    assert not late.fits and late.shortest_window_s == 11 * HOUR
    # a higher priority is ahead whatever its deadline
    higher = [work("vip", 16 * 36_000, priority=10, deadline_at=20 * HOUR)]
    assert not admit(0.0, higher, window_s=HOUR, **common).fits  # type: ignore[arg-type]


def test_admission_without_any_capacity_is_unknown_and_names_no_window() -> None:
    got = admit(
        0.0,
        [],
        priority=1,
        requests=10,
        service_s=1.0,
        window_s=HOUR,
        windows=window_steps(60.0, 86400.0),
        capacity=Capacity(0),
    )
    assert got.finish_at is None and not got.fits and got.shortest_window_s is None


def test_windows_read_as_a_user_would_write_them() -> None:
    assert format_window(45 * 60) == "45m" and format_window(61) == "2m"
    assert format_window(25.2 * HOUR) == "26h" and format_window(HOUR) == "1h"
    steps = window_steps(600.0, 2 * 86400.0)
    assert steps[0] == 600.0 and steps[-1] == 48 * HOUR and 26 * HOUR in steps
