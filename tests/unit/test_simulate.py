"""The SLA simulator (inferbatch.simulate) on short synthetic traces."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from inferbatch.policy import policy_by_name
from inferbatch.simulate.command import run_simulation, run_trace, service_prior
from inferbatch.simulate.engine import simulate
from inferbatch.simulate.report import serving_segments, spot_capacity_bound
from inferbatch.simulate.traces import SpotTrace, TraceError, load_trace, trace_files
from inferbatch.simulate.workload import Workload, generate, load_workload

pytestmark = pytest.mark.unit

HOUR = 3600.0

# A small cluster and a workload that keeps the tests fast: 4 spot workers at the peak,
# 2 slots each, about 1,500 requests over a day.
SMALL: dict[str, Any] = {
    "load": 0.5,
    "service": {"mean_s": 60, "sigma": 0.6, "max_s": 240},
    "failure_probability": 0.01,
    "windows": [
        {"completion_window": "6h", "weight": 3, "median_requests": 60, "max_requests": 200},
        {"completion_window": "1h", "weight": 1, "median_requests": 20, "max_requests": 60},
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


def write_trace(
    path: Path, counts: list[int], gap: float = 300.0, extra: dict[str, Any] | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metadata": {"gap_seconds": gap, **(extra or {})}, "data": counts}))
    return path


def flapping(hours: float, gap: float = 300.0) -> list[int]:
    """Up 40 minutes, down 20, repeated: interruptions, cold starts and outages."""
    pattern = [1] * 8 + [0] * 4
    n = int(hours * HOUR / gap)
    return [pattern[i % len(pattern)] for i in range(n)]


@pytest.fixture
def workload(tmp_path: Path) -> Path:
    path = tmp_path / "workload.json"
    path.write_text(json.dumps(SMALL))
    return path


def run_json(
    policy: str, traces: list[Path], workload: Path, seed: int = 3
) -> list[dict[str, Any]]:
    out = io.StringIO()
    assert run_simulation(policy, traces, seed, workload, True, jobs=1, out=out) == 0
    results: list[dict[str, Any]] = json.loads(out.getvalue())["results"]
    return results


# -- traces --------------------------------------------------------------------------------


def test_trace_format_cloud_notice_and_scale(tmp_path: Path) -> None:
    aws = load_trace(write_trace(tmp_path / "aws-1-1" / "z.json", [0, 4, 2], extra={"x": 1}))
    assert (aws.cloud, aws.notice_seconds, aws.nodes) == ("aws", 120.0, 4)
    assert [aws.workers(i, 8) for i in range(4)] == [0, 8, 4, 0]  # cycles
    gcp = load_trace(write_trace(tmp_path / "gcp-04" / "z.json", [1]))
    assert gcp.notice_seconds == 30.0
    explicit = load_trace(write_trace(tmp_path / "t.json", [1], extra={"notice_seconds": 7}))
    assert explicit.notice_seconds == 7.0
    assert list(aws.segments(8, 1000.0)) == [
        (0.0, 300.0, 0),
        (300.0, 600.0, 8),
        (600.0, 900.0, 4),
        (900.0, 1000.0, 0),
    ]


@pytest.mark.parametrize(
    "doc",
    [
        {"data": [1]},
        {"metadata": {"gap_seconds": 0}, "data": [1]},
        {"metadata": {"gap_seconds": 1}, "data": [-1]},
    ],
)
def test_malformed_traces_are_refused(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TraceError):
        load_trace(path)


def test_directories_expand_to_named_files(tmp_path: Path) -> None:
    write_trace(tmp_path / "a" / "one.json", [1])
    write_trace(tmp_path / "b" / "c" / "two.json", [1])
    assert [name for _, name in trace_files([tmp_path])] == ["a/one", "b/c/two"]


# -- workload ------------------------------------------------------------------------------


def test_workload_file_merges_preset_and_parses_durations(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps(
            {
                "cluster": {"max_dedicated_workers": 3},
                "batches": [{"arrival_s": 5, "requests": 7, "completion_window": "30m"}],
            }
        )
    )
    w = load_workload(path)
    assert w.cluster.max_dedicated_workers == 3 and w.cluster.slots_per_worker == 4
    assert w.windows  # from the preset
    [b] = generate(w, 10 * HOUR, seed=1)
    assert (b.arrival, b.deadline, len(b.service)) == (5.0, 5.0 + 1800.0, 7)
    assert all(0 < s <= w.service.max_s for s in b.service)


def test_generated_load_matches_the_target(workload: Path) -> None:
    w = load_workload(workload)
    batches = generate(w, 20 * 24 * HOUR, seed=5)
    work = sum(sum(b.service) for b in batches) / w.cluster.slots_per_worker
    span = batches[-1].arrival
    assert 0.4 < work / (span * w.cluster.spot_workers) < 0.6


# -- lower bound ---------------------------------------------------------------------------


def test_spot_bound_is_edf_over_windows() -> None:
    segments = [(0.0, 10.0, 1)]
    # Earliest deadline first: 3 units of the short batch, then 7 of the long one.
    assert spot_capacity_bound([(0.0, 5.0, 3.0), (0.0, 10.0, 10.0)], segments) == 10.0
    # Largest-first would have starved the short batch: EDF still fits both.
    assert spot_capacity_bound([(0.0, 10.0, 6.0), (0.0, 4.0, 4.0)], segments) == 10.0
    # Work outside its window cannot count.
    assert spot_capacity_bound([(6.0, 8.0, 5.0)], segments) == 2.0
    assert spot_capacity_bound([(0.0, 10.0, 5.0)], [(0.0, 10.0, 0)]) == 0.0


def test_spot_capacity_serves_after_its_cold_start_and_drops_take_the_newest() -> None:
    capacity = [(0.0, 100.0, 2), (100.0, 400.0, 8), (400.0, 450.0, 0), (450.0, 1000.0, 8)]
    capacity += [(1000.0, 1100.0, 4), (1100.0, 2000.0, 8)]
    assert serving_segments(capacity, 240.0) == [
        (0.0, 240.0, 0),  # the first two boot
        (240.0, 340.0, 2),
        (340.0, 400.0, 8),
        (400.0, 690.0, 0),  # back at 450, serving at 690
        (690.0, 1000.0, 8),
        (1000.0, 1340.0, 4),  # the four oldest stay; their replacements boot again
        (1340.0, 2000.0, 8),
    ]
    assert serving_segments(capacity, 0.0) == capacity


# -- simulations ---------------------------------------------------------------------------


def test_spot_only_misses_without_spot_while_default_meets_every_deadline(
    tmp_path: Path, workload: Path
) -> None:
    trace = write_trace(tmp_path / "aws-zero.json", [0] * 48)
    by_policy = {r["policy"]: r for r in run_json("spot-only,default", [trace], workload)}
    assert by_policy["spot-only"]["deadline_met_fraction"] == 0.0
    default = by_policy["default (deadline-aware)"]
    assert default["deadline_met_fraction"] == 1.0
    assert default["spot_share"] == 0.0


def test_all_dedicated_is_the_cost_reference(tmp_path: Path, workload: Path) -> None:
    trace = write_trace(tmp_path / "aws-flap.json", flapping(12))
    [report] = run_json("all-dedicated", [trace], workload)
    assert report["cost_vs_dedicated"] == 1.0
    assert report["spot_share"] == 0.0
    assert report["deadline_met_fraction"] == 1.0


def test_lower_bound_is_below_every_policy_that_meets_deadlines(
    tmp_path: Path, workload: Path
) -> None:
    trace = write_trace(tmp_path / "aws-flap.json", flapping(12))
    reports = run_json("all", [trace], workload)
    assert {r["policy"] for r in reports} >= {"deadline-aware", "greedy", "uniform-progress"}
    for r in reports:
        if r["deadline_met_fraction"] == 1.0:
            assert r["cost_vs_lower_bound"] >= 1.0, r["policy"]
            assert r["cost_vs_instant_spot_bound"] >= r["cost_vs_lower_bound"], r["policy"]
    default = next(r for r in reports if r["policy"] == "deadline-aware")
    assert default["deadline_met_fraction"] == 1.0
    assert default["worst_window_deadline_met_fraction"] == 1.0
    assert 0.0 < default["spot_share"] <= default["instant_spot_bound_spot_share"]


def test_the_bound_counts_spot_capacity_only_once_it_serves(tmp_path: Path, workload: Path) -> None:
    """Spot up 5 minutes in every 15, with a 2-minute cold start: booting capacity is a
    large part of what the trace grants, and no policy, not even spot-only, gets more work
    onto spot than the serving capacity the bound counts."""
    trace = write_trace(tmp_path / "aws-short.json", ([1] + [0] * 2) * 48)
    reports = {r["policy"]: r for r in run_json("all", [trace], workload)}
    work = reports["all-dedicated"]["useful_gpu_seconds"]  # W: it meets every deadline
    assert reports["all-dedicated"]["deadline_met_fraction"] == 1.0
    for r in reports.values():
        serving = r["lower_bound_spot_share"] * work
        assert r["lower_bound_spot_share"] < r["instant_spot_bound_spot_share"] - 0.1
        assert r["spot_share"] * r["useful_gpu_seconds"] <= serving * (1 + 1e-9), r["policy"]
        if r["deadline_met_fraction"] == 1.0:
            assert r["cost_vs_lower_bound"] >= 1.0, r["policy"]


def test_interruptions_lose_work_and_escalate_requests(tmp_path: Path, workload: Path) -> None:
    trace = load_trace(write_trace(tmp_path / "gcp" / "flap.json", flapping(12, gap=60.0), gap=60))
    w = load_workload(workload)
    batches = generate(w, trace.duration, seed=2)
    prior = service_prior(w)
    spot = simulate(policy_by_name("spot-only"), trace, w.cluster, batches, prior)
    assert spot.interruptions > 0 and spot.wasted_spot > 0
    assert spot.escalated_requests == 0 and spot.useful_dedicated == 0
    default = simulate(policy_by_name("default"), trace, w.cluster, batches, prior)
    assert default.escalated_requests > 0


def test_dedicated_cold_start_delays_the_first_result(tmp_path: Path) -> None:
    w = Workload.model_validate(
        {
            **SMALL,
            "failure_probability": 0,
            "batches": [{"arrival_s": 0, "requests": 1, "completion_window": "1h"}],
        }
    )
    trace = load_trace(write_trace(tmp_path / "t.json", [0] * 24))
    batches = generate(w, trace.duration, seed=1)
    out = simulate(policy_by_name("all-dedicated"), trace, w.cluster, batches, service_prior(w))
    [(spec, finished)] = out.batches
    assert finished is not None
    assert finished >= w.cluster.dedicated_cold_start_s + spec.service[0]


def test_simulation_is_deterministic_for_a_seed(tmp_path: Path, workload: Path) -> None:
    trace = write_trace(tmp_path / "aws-flap.json", flapping(12))
    first = run_json("default", [trace], workload, seed=9)
    assert run_json("default", [trace], workload, seed=9) == first
    assert run_json("default", [trace], workload, seed=10) != first


def test_every_policy_sees_the_same_batches(tmp_path: Path, workload: Path) -> None:
    trace = load_trace(write_trace(tmp_path / "aws-flap.json", flapping(12)))
    reports = run_trace(trace, ["greedy", "spot-only"], load_workload(workload), seed=4)
    assert len({(r.batches, r.requests) for r in reports}) == 1


def test_human_table_and_errors(
    tmp_path: Path, workload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = write_trace(tmp_path / "aws.json", [1] * 24)
    out = io.StringIO()
    assert run_simulation("greedy", [trace], 1, workload, False, jobs=1, out=out) == 0
    assert "| trace | LB spot share | greedy |" in out.getvalue()
    assert "| aws | 1.000 | 1.000 / " in out.getvalue()
    assert run_simulation("cheapest", [trace], 1, workload, False, jobs=1, out=out) == 2
    assert run_simulation("greedy", [tmp_path / "missing.json"], 1, None, False, out=out) == 2
    assert run_simulation("greedy", [], 1, None, False, out=out) == 2
    assert "simulate:" in capsys.readouterr().err


def test_trace_of_unknown_cloud_gets_the_short_notice(tmp_path: Path) -> None:
    trace: SpotTrace = load_trace(write_trace(tmp_path / "azure" / "t.json", [1]))
    assert trace.cloud == "azure" and trace.notice_seconds == 30.0
    other = load_trace(write_trace(tmp_path / "elsewhere" / "t.json", [1]))
    assert other.cloud == "unknown" and other.notice_seconds == 30.0
