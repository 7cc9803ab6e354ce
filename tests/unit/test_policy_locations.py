"""The policy across locations (inferbatch.policy.locations): pure placement and the
escalation invariant on the union of the locations' spot capacity."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from inferbatch.policy import BatchState, ClusterState, policy_by_name
from inferbatch.policy.locations import (
    CapacityWatch,
    LocationMemory,
    LocationState,
    make_before_break,
    place_spot,
    plan_locations,
    preemptions,
    union_cluster,
)

pytestmark = pytest.mark.unit

CLUSTER = ClusterState(
    slots_per_worker=4, max_dedicated_workers=8, dedicated_cold_start_s=240.0, tick_s=30.0
)


def zone(name: str, capacity: int, **fields: float) -> LocationState:
    base: dict[str, float] = {"spot_price_ratio": 0.3, "boot_s": 240.0}
    base.update(fields)
    return LocationState(
        name=name,
        spot_price_ratio=base["spot_price_ratio"],
        boot_s=base["boot_s"],
        capacity=capacity,
        spot_workers=int(base.get("spot_workers", 0)),
        spot_workers_up=int(base.get("spot_workers_up", 0)),
        availability=base.get("availability", 1.0),
        mean_lifetime_s=base.get("mean_lifetime_s", math.inf),
    )


def test_the_fleet_goes_to_the_cheapest_locations_with_capacity() -> None:
    plan = place_spot(
        [
            zone("dear", 8, spot_price_ratio=0.5),
            zone("down", 0, spot_price_ratio=0.1),
            zone("cheap", 3, spot_price_ratio=0.2),
        ],
        fleet=8,
    )
    assert plan == {"down": 0, "cheap": 3, "dear": 5}


def test_a_location_without_capacity_gets_no_spot_workers() -> None:
    plan = place_spot([zone("a", 0, spot_workers=4), zone("b", 0)], fleet=8)
    assert plan == {"a": 0, "b": 0}


def test_running_workers_stay_unless_another_location_is_much_cheaper() -> None:
    running = zone("here", 8, spot_workers=8, spot_price_ratio=0.30)
    close = zone("close", 8, spot_price_ratio=0.28)  # within the migration margin
    assert place_spot([running, close], fleet=8) == {"here": 8, "close": 0}
    cheaper = zone("cheaper", 5, spot_price_ratio=0.20)
    assert place_spot([running, cheaper], fleet=8) == {"here": 3, "cheaper": 5}


def test_short_spot_lifetimes_make_a_location_dearer() -> None:
    flappy = zone("flappy", 8, mean_lifetime_s=600.0)  # a boot is 40 % of a life
    steady = zone("steady", 8, mean_lifetime_s=86400.0)
    assert flappy.effective_price == pytest.approx(0.3 * 1.4)
    assert place_spot([flappy, steady], fleet=6) == {"steady": 6, "flappy": 0}


def test_a_smaller_fleet_releases_the_dearest_workers_first() -> None:
    plan = place_spot(
        [
            zone("cheap", 8, spot_workers=4, spot_price_ratio=0.2),
            zone("dear", 8, spot_workers=4, spot_price_ratio=0.4),
        ],
        fleet=5,
    )
    assert plan == {"cheap": 5, "dear": 0}


def test_escalation_sees_the_union_of_spot_capacity() -> None:
    locations = [
        zone("a", 8, spot_workers_up=3, availability=0.2),
        zone("b", 8, spot_workers_up=2, availability=0.7),
    ]
    union = union_cluster(CLUSTER, locations)
    assert (union.spot_workers_up, union.spot_availability) == (5, 0.7)
    assert union_cluster(CLUSTER, []) == CLUSTER


def test_one_location_plans_exactly_as_the_single_pool_policy() -> None:
    """A batch due soon with no spot anywhere: the escalation decision across one location
    is the single-pool decision, and every dedicated worker goes to that location."""
    batches = [
        BatchState("b1", 0.0, 3600.0, 400, 400, 0, 0, 0, 90.0, 600.0),
        BatchState("b2", 0.0, 86400.0, 800, 800, 0, 0, 0, 90.0, 600.0),
    ]
    policy = policy_by_name("default")
    only = zone("z", 0, availability=0.5)
    plan = plan_locations(policy, 1200.0, batches, CLUSTER, [only], fleet=8)
    single = policy.decide(1200.0, batches, replace(CLUSTER, spot_availability=0.5))
    assert plan.decision == single
    assert plan.decision.dedicated_workers_desired > 0
    assert plan.dedicated_workers == {"z": single.dedicated_workers_desired}
    assert plan.spot_workers == {"z": 0}


def test_a_policy_without_spot_places_no_spot_workers() -> None:
    plan = plan_locations(policy_by_name("all-dedicated"), 0.0, [], CLUSTER, [zone("z", 8)], 8)
    assert plan.spot_workers == {"z": 0}


def test_memory_measures_availability_and_mean_lifetime() -> None:
    memory = LocationMemory(halflife_s=1e12)  # no forgetting within the test
    memory.observe(0.0, True, 0, 0)
    assert memory.mean_lifetime_s == math.inf
    memory.observe(100.0, True, 4, 0)  # 400 worker-seconds served
    memory.observe(200.0, False, 4, 2)  # 400 more, then 2 preemptions
    assert memory.mean_lifetime_s == pytest.approx(400.0)
    assert 0.0 < memory.availability < 1.0


def test_a_location_that_does_not_serve_what_was_asked_is_short() -> None:
    watch = CapacityWatch(grace_s=10.0, probe_s=100.0)
    watch.observe(0.0, asked=3, serving=1)
    watch.observe(5.0, asked=3, serving=1)
    assert watch.capacity(5.0, fleet=8) == 8  # within the boot grace: still unknown
    watch.observe(11.0, asked=3, serving=1)
    assert (watch.capacity(11.0, fleet=8), watch.has_spot) == (1, True)
    watch.observe(12.0, asked=1, serving=0)
    watch.observe(30.0, asked=1, serving=0)
    assert (watch.capacity(30.0, fleet=8), watch.has_spot) == (0, False)


def test_a_short_location_is_probed_again_and_reopens_when_it_serves() -> None:
    watch = CapacityWatch(grace_s=10.0, probe_s=100.0)
    watch.observe(0.0, asked=2, serving=0)
    watch.observe(10.0, asked=2, serving=0)
    assert watch.capacity(50.0, fleet=8) == 0
    assert watch.capacity(110.0, fleet=8) == 1  # the probe: one worker asked again
    watch.observe(110.0, asked=1, serving=0)
    watch.observe(121.0, asked=1, serving=0)  # not served: short again, next probe later
    assert watch.capacity(200.0, fleet=8) == 0
    assert watch.capacity(221.0, fleet=8) == 1
    watch.observe(225.0, asked=1, serving=1)  # served: the ceiling goes
    assert watch.capacity(225.0, fleet=8) == 8


def test_only_departures_beyond_the_asked_scale_down_are_preemptions() -> None:
    assert preemptions(departed=2, serving_before=4, asked_before=4) == 2
    assert preemptions(departed=2, serving_before=4, asked_before=2) == 0
    assert preemptions(departed=3, serving_before=4, asked_before=2) == 1
    assert preemptions(departed=0, serving_before=4, asked_before=0) == 0


def test_work_moves_between_locations_make_before_break() -> None:
    # moving two workers from b to a: b keeps them until a serves its share
    assert make_before_break({"a": 2, "b": 0}, {"b": 2}) == {"a": 2, "b": 2}
    assert make_before_break({"a": 2, "b": 0}, {"a": 1, "b": 2}) == {"a": 2, "b": 2}
    assert make_before_break({"a": 2, "b": 0}, {"a": 2, "b": 2}) == {"a": 2, "b": 0}
    # a fleet that shrinks with nothing missing shrinks at once
    assert make_before_break({"a": 1}, {"a": 3}) == {"a": 1}
