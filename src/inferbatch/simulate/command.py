"""``inferbatch simulate``: replay spot traces against a workload with one or more policies.

``run_simulation`` is what the CLI calls. Per trace it generates the workload once (from
the seed, the same for every policy), simulates each policy on it and prints a markdown
table (trace x policy) or JSON. The horizon is the whole trace, cut at ``max_days`` of the
workload when set; batches arrive until one completion window before the end.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from inferbatch.policy.escalation import DEFAULT_POLICY, POLICY_NAMES, policy_by_name
from inferbatch.simulate.engine import simulate
from inferbatch.simulate.multizone import markdown as multizone_markdown
from inferbatch.simulate.multizone import parse_zone_settings, run_multi_zone
from inferbatch.simulate.report import Report, build_report, cost_of, markdown_table, spot_bounds
from inferbatch.simulate.traces import SpotTrace, load_trace, trace_files
from inferbatch.simulate.workload import Workload, generate, load_workload, preset

ALL_POLICIES = ("deadline-aware", "greedy", "uniform-progress", "all-dedicated", "spot-only")


def policy_names(spec: str) -> list[str]:
    """``all``, one name, or a comma-separated list; ValueError for an unknown name."""
    names = list(ALL_POLICIES) if spec == "all" else [n.strip() for n in spec.split(",")]
    for name in names:
        if name not in POLICY_NAMES:
            raise ValueError(f"unknown policy {name!r}; choose from all, {', '.join(POLICY_NAMES)}")
    return names


def service_prior(workload: Workload) -> tuple[float, float]:
    """Mean and longest service time: what an operator configures up front (the longest
    is the engine timeout)."""
    return workload.service.mean_s, workload.service.max_s


def run_trace(trace: SpotTrace, policies: list[str], workload: Workload, seed: int) -> list[Report]:
    """Every policy on one trace, with the same generated batches."""
    horizon = trace.duration
    if workload.max_days is not None:
        horizon = min(horizon, workload.max_days * 86400)
    batches = generate(workload, horizon, seed)
    cluster = workload.cluster
    until = max([horizon, *(b.deadline for b in batches)])
    prior = service_prior(workload)
    price = workload.spot_price_ratio
    outcomes = {
        name: simulate(policy_by_name(name), trace, cluster, batches, prior, price)
        for name in policies
    }
    if "all-dedicated" not in outcomes:
        everything = policy_by_name("all-dedicated")
        reference = simulate(everything, trace, cluster, batches, prior, price)
    else:
        reference = outcomes["all-dedicated"]
    dedicated_cost = cost_of(reference, workload.spot_price_ratio)
    bounds = spot_bounds(  # the windows all end by ``until``
        batches,
        trace.segments(cluster.spot_workers, until),
        slots_per_worker=cluster.slots_per_worker,
        spot_cold_start_s=cluster.spot_cold_start_s,
    )
    reports = []
    for name, outcome in outcomes.items():
        reports.append(
            build_report(
                trace.name,
                name if name != "default" else f"default ({DEFAULT_POLICY})",
                outcome,
                batches,
                bounds,
                spot_price_ratio=workload.spot_price_ratio,
                metric_window=workload.metric_window,
                dedicated_cost=dedicated_cost,
            )
        )
    return reports


@dataclass(frozen=True, slots=True)
class _Job:
    path: Path
    name: str
    policies: list[str]
    workload: Workload
    seed: int


def _run_job(job: _Job) -> list[Report]:
    return run_trace(load_trace(job.path, job.name), job.policies, job.workload, job.seed)


def run_simulation(
    policy: str,
    traces: list[Path],
    seed: int,
    workload: Path | None,
    as_json: bool,
    *,
    jobs: int = 0,
    out: TextIO | None = None,
    multi_zone: bool = False,
    zone_prices: Sequence[str] = (),
    zone_boots: Sequence[str] = (),
) -> int:
    """Simulate ``policy`` (a name, a comma-separated list, or ``all``) on every trace file
    (directories: all ``*.json`` below them). Prints a markdown table, or JSON with one
    object per (trace, policy) under ``results``. ``jobs``: processes (0: one per CPU).
    ``multi_zone``: every trace is a zone of one run instead (``simulate.multizone``; the
    workload defaults to the ``priority`` preset), with ``ZONE=PRICE`` and
    ``ZONE=SECONDS`` settings per zone.
    Returns 0, or 2 for bad arguments or unreadable files (with a message on stderr)."""
    stream = out if out is not None else sys.stdout
    try:
        names = policy_names(policy)
        default = "priority" if multi_zone else "mixed"
        load = load_workload(workload) if workload is not None else preset(default)
        files = trace_files(traces)
        if not files:
            raise ValueError("no trace files given (use --trace FILE or a directory)")
        loaded = [load_trace(path, name) for path, name in files]  # fail fast
        prices = parse_zone_settings(zone_prices, "--zone-price")
        boots = parse_zone_settings(zone_boots, "--zone-boot")
        if (prices or boots) and not multi_zone:
            raise ValueError("--zone-price and --zone-boot need --multi-zone")
    except (ValueError, OSError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    if multi_zone:
        zoned = run_multi_zone(loaded, names, load, seed, prices=prices, boots=boots, jobs=jobs)
        if as_json:
            doc = {
                "seed": seed,
                "workload": load.name,
                "results": [r.as_dict() for r in zoned],
            }
            stream.write(json.dumps(doc, indent=2) + "\n")
        else:
            stream.write(f"workload {load.name}, seed {seed}, multi-zone\n\n")
            stream.write(multizone_markdown(zoned) + "\n")
        return 0
    work = [_Job(path, name, names, load, seed) for path, name in files]
    processes = min(len(work), jobs or os.cpu_count() or 1)
    reports: list[Report] = []
    if processes <= 1:
        for job in work:
            reports += _run_job(job)
    else:
        with ProcessPoolExecutor(processes) as pool:
            for part in pool.map(_run_job, work):
                reports += part
    if as_json:
        doc = {
            "seed": seed,
            "workload": load.name,
            "spot_price_ratio": load.spot_price_ratio,
            "results": [r.as_dict() for r in reports],
        }
        stream.write(json.dumps(doc, indent=2) + "\n")
    else:
        stream.write(
            f"workload {load.name}, seed {seed}, spot price {load.spot_price_ratio} x dedicated\n\n"
        )
        stream.write(markdown_table(reports) + "\n")
    return 0
