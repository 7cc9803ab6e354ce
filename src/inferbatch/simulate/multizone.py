"""``inferbatch simulate --multi-zone``: several traces replayed at once as spot zones.

The traces are aligned on their start (index 0 of every trace is time 0; the shared
traces of one folder were probed together). The horizon is the *shortest* trace, so
every batch arrives while every zone has real data; the run goes on to the last deadline,
and a trace that ends before that replays from its start (as in a single-zone run).

Per policy it reports: deadlines met, cost against the multi-zone lower bound
(``report.zone_bounds``), against the best single zone in hindsight (each zone alone,
same workload, same policy, its own price and boot time: the cheapest that met every
deadline), and the share of the useful work each zone's spot ran.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from inferbatch.policy.escalation import policy_by_name
from inferbatch.simulate.engine import SimOutcome, Zone, simulate, simulate_zones
from inferbatch.simulate.report import cost_of, zone_bounds
from inferbatch.simulate.traces import SpotTrace
from inferbatch.simulate.workload import SimBatch, Workload, generate


def zone_setting(name: str, settings: Mapping[str, float], default: float) -> float:
    """The value for zone ``name`` in ``settings`` (keys: the zone's name, or its part before
    the first ``_``, e.g. ``us-east-1a`` for ``us-east-1a_v100_1``), else ``default``."""
    if name in settings:
        return settings[name]
    return settings.get(name.split("_", 1)[0], default)


def parse_zone_settings(values: Sequence[str], option: str) -> dict[str, float]:
    """``NAME=NUMBER`` pairs; ValueError naming ``option`` for a malformed one."""
    out: dict[str, float] = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name.strip()] = float(number)
        except ValueError:
            raise ValueError(f"{option}: expected ZONE=NUMBER, got {value!r}") from None
    return out


@dataclass(frozen=True, slots=True)
class MultiZoneReport:
    zones: tuple[str, ...]
    policy: str
    batches: int
    deadline_met_fraction: float
    worst_window_deadline_met_fraction: float
    spot_share: float
    """Useful work on spot (any zone) / all useful work."""
    zone_spot_share: dict[str, float]
    """Useful work on each zone's spot / all useful work."""
    cost_vs_lower_bound: float
    """Against the omniscient multi-zone bound (``report.zone_bounds``)."""
    lower_bound_spot_share: float
    cost_vs_instant_spot_bound: float
    best_single_zone: str | None
    """The cheapest zone run alone that met every deadline (None: none did)."""
    best_single_zone_spot_share: float
    cost_vs_best_single_zone: float
    single_zone_cost_gpu_hours: dict[str, float]
    cost_gpu_hours: float
    interruptions: int
    spot_starts: dict[str, int]
    """Spot workers started per zone, each paying that zone's boot."""
    dedicated_starts: int
    dedicated_billed_gpu_hours: float
    """Dedicated time billed, starting and idle included."""
    dedicated_useful_gpu_hours: float
    wasted_spot_gpu_hours: float
    """Spot work lost to interruptions, failures and expiry (billed at the zone's price)."""
    lower_bound_gpu_hours: float
    single_zone_deadlines: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _met(outcome: SimOutcome) -> list[tuple[float, bool]]:
    return [(spec.arrival, t is not None and t <= spec.deadline) for spec, t in outcome.batches]


def _fraction(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else 1.0


def spot_cost(outcome: SimOutcome, zones: Sequence[Zone]) -> float:
    """Cost in dedicated worker-seconds: each zone's spot work at its price, plus the
    dedicated time billed."""
    price = {z.name: z.spot_price_ratio for z in zones}
    spot = sum(price[n] * w for n, w in outcome.zone_useful.items())
    spot += sum(price[n] * w for n, w in outcome.zone_wasted.items())
    return spot + outcome.dedicated_billed


@dataclass(frozen=True, slots=True)
class _Run:
    policy: str
    zones: tuple[Zone, ...]
    alone: bool
    workload: Workload
    batches: tuple[SimBatch, ...]


def _simulate(run: _Run) -> SimOutcome:
    policy = policy_by_name(run.policy)
    prior = (run.workload.service.mean_s, run.workload.service.max_s)
    cluster = run.workload.cluster
    if run.alone:
        [zone] = run.zones
        cluster = cluster.model_copy(update={"spot_cold_start_s": zone.boot_s})
        return simulate(policy, zone.trace, cluster, run.batches, prior, zone.spot_price_ratio)
    return simulate_zones(policy, run.zones, cluster, run.batches, prior)


def run_multi_zone(
    traces: Sequence[SpotTrace],
    policies: Sequence[str],
    workload: Workload,
    seed: int,
    *,
    prices: Mapping[str, float] | None = None,
    boots: Mapping[str, float] | None = None,
    jobs: int = 1,
) -> list[MultiZoneReport]:
    """Each policy across every zone of ``traces``, and on each zone alone, on one
    generated workload. ``prices`` / ``boots``: per zone (see ``zone_setting``), default
    the workload's spot price and the cluster's spot cold start."""
    zones = tuple(
        Zone(
            t.name,
            t,
            zone_setting(t.name, prices or {}, workload.spot_price_ratio),
            zone_setting(t.name, boots or {}, workload.cluster.spot_cold_start_s),
        )
        for t in traces
    )
    horizon = min(t.duration for t in traces)
    if workload.max_days is not None:
        horizon = min(horizon, workload.max_days * 86400)
    batches = tuple(generate(workload, horizon, seed))
    until = max([horizon, *(b.deadline for b in batches)])
    cluster = workload.cluster
    bounds = zone_bounds(
        batches,
        [
            (list(z.trace.segments(cluster.spot_workers, until)), z.boot_s, z.spot_price_ratio)
            for z in zones
        ],
        fleet=cluster.spot_workers,
        slots_per_worker=cluster.slots_per_worker,
    )
    runs = [_Run(p, zones, False, workload, batches) for p in policies]
    runs += [_Run(p, (z,), True, workload, batches) for p in policies for z in zones]
    processes = max(1, min(len(runs), jobs or os.cpu_count() or 1))
    if processes == 1:
        outcomes = [_simulate(r) for r in runs]
    else:
        with ProcessPoolExecutor(processes) as pool:
            outcomes = list(pool.map(_simulate, runs))
    reports = []
    for i, name in enumerate(policies):
        multi = outcomes[i]
        alone = outcomes[len(policies) + i * len(zones) : len(policies) + (i + 1) * len(zones)]
        single_cost = {
            z.name: cost_of(o, z.spot_price_ratio) for z, o in zip(zones, alone, strict=True)
        }
        single_met = {
            z.name: _fraction([m for _, m in _met(o)]) for z, o in zip(zones, alone, strict=True)
        }
        safe = [z.name for z in zones if single_met[z.name] == 1.0]
        best = min(safe, key=lambda n: single_cost[n], default=None)
        best_outcome = alone[[z.name for z in zones].index(best)] if best is not None else None
        cost = spot_cost(multi, zones)
        useful = multi.useful_spot + multi.useful_dedicated
        met = _met(multi)
        by_day: dict[int, list[bool]] = {}
        for arrival, ok in met:
            by_day.setdefault(int(arrival // workload.metric_window), []).append(ok)
        reports.append(
            MultiZoneReport(
                zones=tuple(z.name for z in zones),
                policy=name,
                batches=len(batches),
                deadline_met_fraction=_fraction([ok for _, ok in met]),
                worst_window_deadline_met_fraction=min(
                    (_fraction(v) for v in by_day.values()), default=1.0
                ),
                spot_share=multi.useful_spot / useful if useful else 0.0,
                zone_spot_share={
                    z.name: multi.zone_useful.get(z.name, 0.0) / useful if useful else 0.0
                    for z in zones
                },
                cost_vs_lower_bound=cost / bounds.lower_bound if bounds.lower_bound else 0.0,
                lower_bound_spot_share=bounds.spot / bounds.work if bounds.work else 0.0,
                cost_vs_instant_spot_bound=cost / bounds.instant_lower_bound
                if bounds.instant_lower_bound
                else 0.0,
                best_single_zone=best,
                best_single_zone_spot_share=_share(best_outcome),
                cost_vs_best_single_zone=cost / single_cost[best] if best is not None else 0.0,
                single_zone_cost_gpu_hours={n: c / 3600 for n, c in single_cost.items()},
                cost_gpu_hours=cost / 3600,
                interruptions=multi.interruptions,
                spot_starts=dict(multi.spot_starts),
                dedicated_starts=multi.dedicated_starts,
                dedicated_billed_gpu_hours=multi.dedicated_billed / 3600,
                dedicated_useful_gpu_hours=multi.useful_dedicated / 3600,
                wasted_spot_gpu_hours=multi.wasted_spot / 3600,
                lower_bound_gpu_hours=bounds.lower_bound / 3600,
                single_zone_deadlines=single_met,
            )
        )
    return reports


def _share(outcome: SimOutcome | None) -> float:
    if outcome is None:
        return 0.0
    useful = outcome.useful_spot + outcome.useful_dedicated
    return outcome.useful_spot / useful if useful else 0.0


def markdown(reports: Sequence[MultiZoneReport]) -> str:
    """One row per policy: deadlines, cost against both references, spot shares."""
    if not reports:
        return ""
    zones = reports[0].zones
    lines = [
        "zones: " + ", ".join(zones),
        "",
        "| policy | deadlines | cost / LB | LB spot share | cost / best zone | best zone "
        "(its spot share) | spot share | " + " | ".join(zones) + " |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | "
        + " | ".join("---:" for _ in zones)
        + " |",
    ]
    for r in reports:
        shares = " | ".join(f"{r.zone_spot_share[z]:.3f}" for z in zones)
        best = f"{r.best_single_zone} ({r.best_single_zone_spot_share:.3f})"
        lines.append(
            f"| {r.policy} | {r.deadline_met_fraction:.3f} | {r.cost_vs_lower_bound:.3f} | "
            f"{r.lower_bound_spot_share:.3f} | {r.cost_vs_best_single_zone:.3f} | {best} | "
            f"{r.spot_share:.3f} | {shares} |"
        )
    return "\n".join(lines)
