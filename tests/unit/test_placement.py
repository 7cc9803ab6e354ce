"""The escalate duty's per-location view (inferbatch.scheduler.placement): capacity
inferred from what serves, preemptions from departures, targets make-before-break."""

from __future__ import annotations

import pytest

from inferbatch.config import Settings, SpotLocation
from inferbatch.policy import BatchState
from inferbatch.policy.locations import place_spot
from inferbatch.scheduler.placement import SpotPlacement

pytestmark = pytest.mark.unit


def _settings(**fields: object) -> Settings:
    return Settings(
        spot_locations=[
            SpotLocation(name="cheap", spot_price_ratio=0.2, boot_seconds=10),
            SpotLocation(name="dear", spot_price_ratio=0.35, boot_seconds=10),
        ],
        scheduler_tick_seconds=1,
        location_probe_seconds=300,
        engine_max_in_flight=4,
        **fields,  # type: ignore[arg-type]
    )


def _batch(queued: int) -> BatchState:
    return BatchState(
        batch_id="b",
        created_at=0.0,
        deadline_at=86400.0,
        total=queued,
        queued_spot=queued,
        queued_dedicated=0,
        running_spot=0,
        running_dedicated=0,
        mean_service_seconds=1.0,
        tail_service_seconds=1.0,
    )


def _tick(p: SpotPlacement, now: float, serving: dict[str, set[str]], fleet: int) -> dict[str, int]:
    states = p.observe(now, serving, fleet)
    return p.targets(place_spot(states, fleet))


def test_the_fleet_follows_the_queued_spot_work_up_to_the_cap() -> None:
    assert SpotPlacement(_settings()).fleet([_batch(10)]) == 3
    assert SpotPlacement(_settings(max_spot_workers=2)).fleet([_batch(10)]) == 2
    assert SpotPlacement(_settings()).fleet([]) == 0


def test_a_short_location_sends_the_fleet_elsewhere_and_is_probed_later() -> None:
    p = SpotPlacement(_settings())
    assert _tick(p, 0.0, {}, 2) == {"cheap": 2, "dear": 0}
    assert _tick(p, 5.0, {"cheap": {"w1"}}, 2) == {"cheap": 2, "dear": 0}
    # a second worker never arrives: after 1.5 boots and a tick the location is short
    assert _tick(p, 17.0, {"cheap": {"w1"}}, 2) == {"cheap": 2, "dear": 0}
    assert _tick(p, 40.0, {"cheap": {"w1"}}, 2) == {"cheap": 1, "dear": 1}
    assert p.describe(40.0, 2)["cheap"]["capacity"] == 1
    # the probe: one more asked of the cheap location, the dear worker held meanwhile
    assert _tick(p, 400.0, {"cheap": {"w1"}, "dear": {"w2"}}, 2) == {"cheap": 2, "dear": 1}
    assert _tick(p, 405.0, {"cheap": {"w1", "w3"}, "dear": {"w2"}}, 2) == {"cheap": 2, "dear": 0}


def test_a_worker_the_cloud_took_counts_as_a_preemption() -> None:
    p = SpotPlacement(_settings())
    _tick(p, 0.0, {"cheap": {"w1", "w2"}}, 2)
    _tick(p, 10.0, {"cheap": {"w1"}}, 2)  # w2 left while two were asked: preempted
    assert p.locations["cheap"].memory.preemptions == pytest.approx(1.0)
    assert _tick(p, 20.0, {"cheap": {"w1"}}, 0) == {"cheap": 0, "dear": 0}
    _tick(p, 30.0, {}, 0)  # w1 was asked to go: not a preemption
    assert p.locations["cheap"].memory.preemptions == pytest.approx(1.0, rel=1e-2)


def test_a_location_a_spot_worker_declares_is_placed_on_too() -> None:
    p = SpotPlacement(Settings(engine_max_in_flight=4))
    assert not p.active
    p.observe(0.0, {"eu-west-1a": {"w1"}}, 1)
    assert p.active and p.dedicated_location == "eu-west-1a"
    assert _tick(p, 1.0, {"eu-west-1a": {"w1"}}, 1) == {"eu-west-1a": 1}
