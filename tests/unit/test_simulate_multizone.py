"""The multi-zone simulator (``inferbatch simulate --multi-zone``) on small synthetic traces."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from inferbatch.policy import policy_by_name
from inferbatch.simulate.command import run_simulation, run_trace, service_prior
from inferbatch.simulate.engine import Zone, simulate_zones
from inferbatch.simulate.multizone import run_multi_zone, zone_setting
from inferbatch.simulate.report import combine_segments, spot_bounds, zone_bounds
from inferbatch.simulate.traces import SpotTrace
from inferbatch.simulate.workload import SimBatch, Workload, generate

pytestmark = pytest.mark.unit

HOUR = 3600.0

SMALL: dict[str, Any] = {
    "load": 0.5,
    "service": {"mean_s": 60, "sigma": 0.6, "max_s": 240},
    "failure_probability": 0.01,
    "windows": [
        {"completion_window": "6h", "weight": 3, "median_requests": 60, "max_requests": 200},
        {"completion_window": "1h", "weight": 1, "median_requests": 20, "max_requests": 60},
        {"completion_window": "30m", "weight": 0.3, "median_requests": 10, "priority": 10},
    ],
    "cluster": {
        "spot_workers": 4,
        "slots_per_worker": 2,
        "max_dedicated_workers": 4,
        "dedicated_cold_start_s": 120,
        "spot_cold_start_s": 120,
        "tick_s": 15,
    },
}
WORKLOAD = Workload.model_validate(SMALL)


def trace(name: str, counts: list[int], gap: float = 300.0) -> SpotTrace:
    return SpotTrace(name, gap, tuple(counts), max(1, *counts), "aws", 120.0)


def flapping(hours: float, phase: int = 0) -> list[int]:
    """Up 40 minutes, down 20 (5-minute ticks), shifted by ``phase`` ticks."""
    pattern = [1] * 8 + [0] * 4
    return [pattern[(i + phase) % len(pattern)] for i in range(int(hours * 12))]


def halves(hours: float, phase: int = 0) -> list[int]:
    """Up 3 hours, down 3 (5-minute ticks), shifted by ``phase`` ticks."""
    pattern = [1] * 36 + [0] * 36
    return [pattern[(i + phase) % len(pattern)] for i in range(int(hours * 12))]


def test_zones_out_of_phase_meet_every_deadline_above_the_bound() -> None:
    zones = [trace("a", halves(18)), trace("b", halves(18, phase=36))]
    [report] = run_multi_zone(zones, ["default"], WORKLOAD, seed=3)
    assert report.deadline_met_fraction == 1.0
    assert report.cost_vs_lower_bound >= 1.0
    assert report.cost_vs_instant_spot_bound >= report.cost_vs_lower_bound
    assert report.zone_spot_share["a"] > 0.1 and report.zone_spot_share["b"] > 0.1
    assert sum(report.zone_spot_share.values()) == pytest.approx(report.spot_share)
    # either zone alone has 3-hour outages; together spot is always somewhere
    assert report.best_single_zone is not None
    assert report.cost_vs_best_single_zone < 1.0
    assert report.spot_share > report.best_single_zone_spot_share


def test_a_zone_that_is_always_down_gets_no_spot_work() -> None:
    zones = [trace("down", [0] * 144), trace("up", flapping(12))]
    [report] = run_multi_zone(zones, ["default"], WORKLOAD, seed=3)
    assert report.deadline_met_fraction == 1.0
    assert report.zone_spot_share["down"] == 0.0
    assert report.spot_starts.get("down", 0) == 0
    assert report.zone_spot_share["up"] > 0.3
    assert report.single_zone_deadlines["down"] == 1.0  # dedicated alone keeps them


def batches_for(zones: list[SpotTrace]) -> list[SimBatch]:
    return generate(WORKLOAD, min(z.duration for z in zones), seed=3)


def test_work_moved_to_another_zone_pays_that_zones_boot() -> None:
    """Zone ``a`` serves the first hour, then never again; ``b`` is always up. The fleet
    starts in ``a`` (same price, first by name) and moves to ``b`` when ``a`` goes: with a
    boot longer than the run in ``b``, no work ever runs there."""
    a, b = trace("a", [1] * 12 + [0] * 132), trace("b", [1] * 144)
    batches = batches_for([a, b])
    policy, prior = policy_by_name("default"), service_prior(WORKLOAD)

    def run(boot_b: float) -> Any:
        zones = [Zone("a", a, 0.3, 120.0), Zone("b", b, 0.3, boot_b)]
        return simulate_zones(policy, zones, WORKLOAD.cluster, batches, prior)

    quick, endless = run(300.0), run(10 * 24 * HOUR)
    assert quick.spot_starts["b"] >= WORKLOAD.cluster.spot_workers
    assert quick.zone_useful["b"] > 0.0
    assert endless.spot_starts["b"] >= WORKLOAD.cluster.spot_workers
    assert endless.zone_useful.get("b", 0.0) == 0.0
    assert endless.zone_useful["a"] > 0.0
    assert endless.useful_dedicated > quick.useful_dedicated


def test_the_multi_zone_bound_counts_each_zones_boot_and_price() -> None:
    w = WORKLOAD
    a, b = trace("a", [1] * 12 + [0] * 132), trace("b", [1] * 144)
    batches = batches_for([a, b])
    until = max([a.duration, *(x.deadline for x in batches)])
    fleet, slots = w.cluster.spot_workers, w.cluster.slots_per_worker
    seg_a, seg_b = list(a.segments(fleet, until)), list(b.segments(fleet, until))
    # one zone: the single-zone bound
    one = zone_bounds(batches, [(seg_a, 120.0, 0.3)], fleet=fleet, slots_per_worker=slots)
    single = spot_bounds(batches, seg_a, slots_per_worker=slots, spot_cold_start_s=120.0)
    assert one.spot == pytest.approx(single.spot)
    assert one.lower_bound == pytest.approx(0.3 * single.spot + single.work - single.spot)
    # a second zone can only help; an endless boot makes it useless
    both = zone_bounds(
        batches, [(seg_a, 120.0, 0.3), (seg_b, 120.0, 0.3)], fleet=fleet, slots_per_worker=slots
    )
    dead = zone_bounds(
        batches, [(seg_a, 120.0, 0.3), (seg_b, 1e9, 0.3)], fleet=fleet, slots_per_worker=slots
    )
    assert both.spot > one.spot and both.lower_bound < one.lower_bound
    assert dead.spot == pytest.approx(one.spot)
    # a cheaper zone is used first: free spot in b leaves nothing worth doing in a
    free = zone_bounds(
        batches, [(seg_a, 120.0, 0.3), (seg_b, 120.0, 0.0)], fleet=fleet, slots_per_worker=slots
    )
    assert free.savings >= both.savings


def test_combined_capacity_is_the_sum_capped_at_the_fleet() -> None:
    a = [(0.0, 10.0, 2), (10.0, 20.0, 0)]
    b = [(0.0, 5.0, 0), (5.0, 20.0, 3)]
    assert combine_segments([a, b], cap=4) == [(0.0, 5.0, 2), (5.0, 10.0, 4), (10.0, 20.0, 3)]


def test_one_zone_is_exactly_the_single_zone_run() -> None:
    only = trace("z", flapping(12))
    [zoned] = run_multi_zone([only], ["default"], WORKLOAD, seed=3)
    [single] = run_trace(only, ["default"], WORKLOAD, seed=3)
    assert zoned.cost_vs_lower_bound == pytest.approx(single.cost_vs_lower_bound)
    assert zoned.spot_share == single.spot_share
    assert zoned.deadline_met_fraction == single.deadline_met_fraction
    assert zoned.cost_vs_best_single_zone == pytest.approx(1.0)


def test_zone_settings_match_the_zone_name_or_its_location() -> None:
    settings = {"us-east-1a": 0.2, "us-west-2b_v100_1": 0.4}
    assert zone_setting("us-east-1a_v100_1", settings, 0.3) == 0.2
    assert zone_setting("us-west-2b_v100_1", settings, 0.3) == 0.4
    assert zone_setting("us-west-2c_v100_1", settings, 0.3) == 0.3


def test_command_line_runs_zones_with_prices_and_refuses_bad_settings(tmp_path: Path) -> None:
    files = []
    for name, counts in (("a", flapping(12)), ("b", flapping(12, phase=6))):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"metadata": {"gap_seconds": 300}, "data": counts}))
        files.append(path)
    workload = tmp_path / "w.json"
    workload.write_text(json.dumps(SMALL))
    out = io.StringIO()
    args: dict[str, Any] = {"jobs": 1, "out": out, "multi_zone": True}
    code = run_simulation("default", files, 3, workload, True, **args, zone_prices=["a=0.2"])
    assert code == 0
    [result] = json.loads(out.getvalue())["results"]
    assert result["zones"] == ["a", "b"] and result["deadline_met_fraction"] == 1.0
    assert run_simulation("default", files, 3, workload, True, **args, zone_boots=["b"]) == 2
    plain: dict[str, Any] = {"jobs": 1, "out": io.StringIO()}
    assert run_simulation("default", files, 3, workload, True, **plain, zone_prices=["a=1"]) == 2
