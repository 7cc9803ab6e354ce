"""Metrics of a simulation run and the omniscient lower bound on cost.

Cost model (``spot_price_ratio`` = p, dedicated price 1 per worker-second): cost =
p * (spot worker-seconds of work run, useful or lost) + (dedicated worker-seconds existed,
starting and idle included). ``W`` is the useful work of the whole workload: the sum over
requests of ``service / slots_per_worker`` (one successful run each).

- ``cost_vs_dedicated`` = cost / the cost of the ``all-dedicated`` policy on the same
  workload (no spot at all, same autoscaler, cold starts and partly filled workers
  included), so ``all-dedicated`` itself is exactly 1.
- ``cost_vs_ideal`` = cost / W: against running every request once on dedicated with no
  overhead at all.
- ``cost_vs_lower_bound`` = cost / LB with LB = p * S + (W - S), where S is the most work
  that *could* have run on spot: the maximum, over all fluid schedules, of work done on
  the spot workers serving at each instant (no notice, no loss, work divisible across
  workers) by batches between their arrival and deadline. A spot worker serves from its
  cold start after the trace grants it until the trace takes it back, newest first: the
  environment's rule, identical for every policy (``serving_segments``). S is computed
  exactly by earliest-deadline-first over the capacity timeline (Glover's rule for
  interval windows). Every policy that meets every deadline costs at least LB: its spot
  work fits in that capacity within the windows, it pays at least p for each unit of it
  and 1 for each unit of the rest.
- ``cost_vs_instant_spot_bound``: the same with spot capacity serving the instant the
  trace grants it (no spot cold start). No policy of this simulator can use that booting
  capacity, so this bound is lower still and out of reach by more.

Several zones (``zone_bounds``), zone ``z`` at price ``p_z``: cost = W - sum over zones of
``(1 - p_z) x_z`` with ``x_z`` the work run on zone ``z``'s spot, so the bound is the most
*savings* any fluid schedule gets. At each instant spot work can use the serving capacity
of every zone, at most the spot fleet in all. The spot volumes ``(x_z)`` such schedules
can reach form a polymatroid (sink flows of a network: batches -> instants -> zones), whose
rank ``f(A)`` is the most work on the zones of ``A`` alone: earliest-deadline-first on
``min(fleet, sum of A's serving capacity)``. A linear objective with non-negative weights
is maximised on a polymatroid greedily: cheapest zones first, ``x`` of the k-th cheapest =
``f(k cheapest) - f(k - 1 cheapest)``. With one price this is ``LB = p S + (W - S)`` on the
summed capacity; with one zone, exactly the single-zone bound.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from inferbatch.simulate.engine import SimOutcome
from inferbatch.simulate.workload import SimBatch


@dataclass(frozen=True, slots=True)
class Report:
    trace: str
    policy: str
    batches: int
    requests: int
    simulated_days: float
    deadline_met_fraction: float
    worst_window_deadline_met_fraction: float
    spot_share: float
    """Useful work done on spot / all useful work done."""
    cost_vs_dedicated: float
    cost_vs_lower_bound: float
    cost_vs_ideal: float
    lower_bound_spot_share: float
    """S / W: the share of the work the omniscient schedule puts on spot."""
    cost_vs_instant_spot_bound: float
    instant_spot_bound_spot_share: float
    cost_gpu_hours: float
    """Cost in dedicated GPU-hours."""
    useful_gpu_seconds: float
    wasted_gpu_seconds: float
    """Work started and thrown away: spot interruptions, failed attempts, expiry."""
    dedicated_idle_gpu_seconds: float
    """Dedicated time billed with no work to show for it (starting, idle slots)."""
    interruptions: int
    escalated_requests: int
    moved_requests: int
    returned_requests: int
    dedicated_starts: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cost_of(outcome: SimOutcome, spot_price_ratio: float) -> float:
    """Cost in dedicated worker-seconds (see the module docstring)."""
    spot = outcome.useful_spot + outcome.wasted_spot
    return spot_price_ratio * spot + outcome.dedicated_billed


def spot_capacity_bound(
    batches: Sequence[tuple[float, float, float]], segments: Iterable[tuple[float, float, int]]
) -> float:
    """Most work of ``(arrival, deadline, work)`` batches that fits on ``segments`` of
    constant capacity ``(start, end, workers)``, each batch only within its window."""
    order = sorted(range(len(batches)), key=lambda i: batches[i][0])
    remaining = [w for _, _, w in batches]
    cuts = sorted({t for a, d, _ in batches for t in (a, d)})
    ready: list[tuple[float, int]] = []  # (deadline, index) of released batches
    released, cut, done = 0, 0, 0.0
    for start, end, workers in segments:
        t = start
        while t < end:
            while cut < len(cuts) and cuts[cut] <= t:
                cut += 1
            stop = min(end, cuts[cut]) if cut < len(cuts) else end
            while released < len(order) and batches[order[released]][0] <= t:
                i = order[released]
                heapq.heappush(ready, (batches[i][1], i))
                released += 1
            while ready and ready[0][0] <= t:
                heapq.heappop(ready)
            budget = workers * (stop - t)
            while budget > 0 and ready:
                _, i = ready[0]
                take = min(budget, remaining[i])
                remaining[i] -= take
                budget -= take
                done += take
                if remaining[i] <= 0:
                    heapq.heappop(ready)
            t = stop
    return done


def serving_segments(
    segments: Iterable[tuple[float, float, int]], cold_start_s: float
) -> list[tuple[float, float, int]]:
    """The spot workers *serving* over time, from the capacity ``segments``: a worker the
    capacity allows serves ``cold_start_s`` after it appears, and a drop removes the newest
    workers first (the simulator's rule, so the same for every policy). Then the workers
    serving at ``t`` are those present all through ``[t - cold_start_s, t]``: the least
    capacity in that interval (none before the trace starts)."""
    segs = list(segments)
    if not segs or cold_start_s <= 0.0:
        return segs
    first, end = segs[0][0], segs[-1][1]
    starts = [start for start, _, _ in segs]
    cuts = sorted({*starts, *(stop + cold_start_s for _, stop, _ in segs), first + cold_start_s})
    cuts = [t for t in cuts if t < end] + [end]
    out: list[tuple[float, float, int]] = []
    for a, b in itertools.pairwise(cuts):
        mid = (a + b) / 2  # the least capacity is constant between two cuts
        if mid - cold_start_s < first:
            workers = 0
        else:
            lo = bisect.bisect_right(starts, mid - cold_start_s) - 1
            hi = bisect.bisect_right(starts, mid) - 1
            workers = min(w for _, _, w in segs[lo : hi + 1])
        _extend(out, a, b, workers)
    return out


def _extend(out: list[tuple[float, float, int]], a: float, b: float, workers: int) -> None:
    """Append the segment [a, b) with ``workers`` to ``out``, merged into the last one
    when that has the same count."""
    if out and out[-1][2] == workers:
        out[-1] = (out[-1][0], b, workers)
    else:
        out.append((a, b, workers))


@dataclass(frozen=True, slots=True)
class SpotBounds:
    """What the lower bounds need, the same for every policy on one trace (worker-seconds):
    ``work`` W, ``spot`` S on the serving spot capacity, ``instant_spot`` S on the capacity
    the trace grants (booting included)."""

    work: float
    spot: float
    instant_spot: float


def spot_bounds(
    batches: Sequence[SimBatch],
    segments: Iterable[tuple[float, float, int]],
    *,
    slots_per_worker: int,
    spot_cold_start_s: float,
) -> SpotBounds:
    """The bounds of ``batches`` on the spot capacity ``segments`` (which must reach the
    last deadline), each new spot worker serving ``spot_cold_start_s`` after it appears."""
    windows = [(b.arrival, b.deadline, sum(b.service) / slots_per_worker) for b in batches]
    segments = list(segments)
    return SpotBounds(
        work=sum(w for _, _, w in windows),
        spot=spot_capacity_bound(windows, serving_segments(segments, spot_cold_start_s)),
        instant_spot=spot_capacity_bound(windows, segments),
    )


def build_report(
    trace: str,
    policy: str,
    outcome: SimOutcome,
    batches: Sequence[SimBatch],
    bounds: SpotBounds,
    *,
    spot_price_ratio: float,
    metric_window: float,
    dedicated_cost: float | None = None,
) -> Report:
    """Metrics of one run; ``bounds`` from ``spot_bounds`` on the same batches and trace;
    ``dedicated_cost``: the all-dedicated run's ``cost_of`` (None: this run is it)."""
    p = spot_price_ratio
    total, spot_bound, instant_spot = bounds.work, bounds.spot, bounds.instant_spot
    lower_bound = p * spot_bound + (total - spot_bound)
    instant_bound = p * instant_spot + (total - instant_spot)
    cost = cost_of(outcome, p)
    reference = cost if dedicated_cost is None else dedicated_cost

    met_by_window: dict[int, list[bool]] = {}
    met_all = []
    for spec, finished in outcome.batches:
        met = finished is not None and finished <= spec.deadline
        met_all.append(met)
        met_by_window.setdefault(int(spec.arrival // metric_window), []).append(met)
    useful = outcome.useful_spot + outcome.useful_dedicated

    def fraction(values: Sequence[bool]) -> float:
        return sum(values) / len(values) if values else 1.0

    return Report(
        trace=trace,
        policy=policy,
        batches=len(batches),
        requests=sum(len(b.service) for b in batches),
        simulated_days=outcome.end / 86400,
        deadline_met_fraction=fraction(met_all),
        worst_window_deadline_met_fraction=min(
            (fraction(v) for v in met_by_window.values()), default=1.0
        ),
        spot_share=outcome.useful_spot / useful if useful else 0.0,
        cost_vs_dedicated=cost / reference if reference else 0.0,
        cost_vs_lower_bound=cost / lower_bound if lower_bound else 0.0,
        cost_vs_ideal=cost / total if total else 0.0,
        lower_bound_spot_share=spot_bound / total if total else 0.0,
        cost_vs_instant_spot_bound=cost / instant_bound if instant_bound else 0.0,
        instant_spot_bound_spot_share=instant_spot / total if total else 0.0,
        cost_gpu_hours=cost / 3600,
        useful_gpu_seconds=useful,
        wasted_gpu_seconds=outcome.wasted_spot + outcome.wasted_dedicated,
        dedicated_idle_gpu_seconds=outcome.dedicated_billed
        - outcome.useful_dedicated
        - outcome.wasted_dedicated,
        interruptions=outcome.interruptions,
        escalated_requests=outcome.escalated_requests,
        moved_requests=outcome.moved_requests,
        returned_requests=outcome.returned_requests,
        dedicated_starts=outcome.dedicated_starts,
    )


def markdown_table(reports: Sequence[Report]) -> str:
    """One row per trace, one column per policy (in the given order); each cell is
    ``deadline_met_fraction / cost_vs_lower_bound / spot_share``."""
    policies = list(dict.fromkeys(r.policy for r in reports))
    rows: dict[str, dict[str, Report]] = {}
    for r in reports:
        rows.setdefault(r.trace, {})[r.policy] = r
    lines = [
        "Each cell: deadline_met_fraction / cost_vs_lower_bound / spot_share.",
        "",
        "| trace | LB spot share | " + " | ".join(policies) + " |",
        "| --- | ---: | " + " | ".join(":---:" for _ in policies) + " |",
    ]
    for trace, by_policy in rows.items():
        first = next(iter(by_policy.values()))
        cells = []
        for name in policies:
            cell = by_policy.get(name)
            cells.append(
                "-"
                if cell is None
                else f"{cell.deadline_met_fraction:.3f} / {cell.cost_vs_lower_bound:.3f} / "
                f"{cell.spot_share:.3f}"
            )
        lines.append(
            f"| {trace} | {first.lower_bound_spot_share:.3f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def combine_segments(
    parts: Sequence[Sequence[tuple[float, float, int]]], cap: int
) -> list[tuple[float, float, int]]:
    """The sum of several capacity timelines ``(start, end, workers)`` (each covering the
    same span), at most ``cap`` workers at any instant."""
    if not parts:
        return []
    end = min(p[-1][1] for p in parts if p)
    cuts = sorted({t for p in parts for a, b, _ in p for t in (a, b) if t < end} | {end})
    starts = [[a for a, _, _ in p] for p in parts]
    out: list[tuple[float, float, int]] = []
    for a, b in itertools.pairwise(cuts):
        total = 0
        for part, first in zip(parts, starts, strict=True):
            i = bisect.bisect_right(first, a) - 1
            if i >= 0 and part[i][1] > a:
                total += part[i][2]
        workers = min(cap, total)
        _extend(out, a, b, workers)
    return out


@dataclass(frozen=True, slots=True)
class ZoneBounds:
    """The multi-zone bounds (worker-seconds): ``work`` W, ``spot`` the most work on the
    zones' serving spot, ``savings`` the most of ``sum (1 - p_z) x_z``; the same two with
    booting capacity counted (``instant_*``)."""

    work: float
    spot: float
    savings: float
    instant_spot: float
    instant_savings: float

    @property
    def lower_bound(self) -> float:
        return self.work - self.savings

    @property
    def instant_lower_bound(self) -> float:
        return self.work - self.instant_savings


def zone_bounds(
    batches: Sequence[SimBatch],
    zones: Sequence[tuple[Sequence[tuple[float, float, int]], float, float]],
    *,
    fleet: int,
    slots_per_worker: int,
) -> ZoneBounds:
    """The bounds of ``batches`` on ``zones`` given as ``(capacity segments reaching the
    last deadline, boot seconds, spot price)``, at most ``fleet`` spot workers in all
    (see the module docstring: the greedy over zones by price)."""
    windows = [(b.arrival, b.deadline, sum(b.service) / slots_per_worker) for b in batches]

    def greedy(
        timelines: list[tuple[list[tuple[float, float, int]], float]],
    ) -> tuple[float, float]:
        timelines.sort(key=lambda zone: zone[1])
        savings, before, k = 0.0, 0.0, 0
        while k < len(timelines):
            price = timelines[k][1]
            while k < len(timelines) and timelines[k][1] == price:
                k += 1  # zones of one price enter together: one EDF pass per price
            volume = spot_capacity_bound(
                windows, combine_segments([t for t, _ in timelines[:k]], fleet)
            )
            savings += (1.0 - price) * (volume - before)
            before = volume
        return before, savings

    serving = [(serving_segments(list(seg), boot), price) for seg, boot, price in zones]
    instant = [(list(seg), price) for seg, _, price in zones]
    spot, savings = greedy(serving)
    instant_spot, instant_savings = greedy(instant)
    return ZoneBounds(
        work=sum(w for _, _, w in windows),
        spot=spot,
        savings=savings,
        instant_spot=instant_spot,
        instant_savings=instant_savings,
    )
