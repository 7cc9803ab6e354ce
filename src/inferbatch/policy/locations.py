"""Spot across locations: where the spot fleet runs, and the escalation policy on the union
of every location's spot capacity (pure: no I/O, no clock; ``now`` is an argument).

The same code runs in the simulator (``inferbatch simulate --multi-zone``) and is what the
scheduler calls once workers declare a location. Units as in ``policy.escalation``: seconds
for times, worker-seconds for work, prices per worker-second relative to a dedicated worker.

The plan has two independent parts:

- **Escalation** is unchanged and location-blind. The invariant is still "if *all* spot
  capacity vanished now, dedicated workers could finish every batch in time", so the
  policy sees the union of the locations' spot capacity as one spot fleet
  (``union_cluster``): spot workers serving anywhere, and the share of recent time in
  which *some* location could run spot. Work is escalated only when no location's spot
  can finish it in time, and safety never depends on where spot runs.
- **Placement** (``place_spot``) spreads the spot fleet (``fleet`` workers, what the spot
  autoscalers may run in total) over the locations that have capacity now, cheapest
  effective price first. The effective price of a location is its spot price inflated by
  the share of a spot worker's life spent booting: ``price * (1 + boot / lifetime)``, where
  ``lifetime`` is the measured mean time a spot worker there serves before a preemption.
  Workers that run are kept where they are (moving one costs a boot); one moves only to a
  location cheaper by more than ``migration_margin``, and the old one drains only once its
  replacement serves (the caller's autoscaler does that: ``place_spot`` says only how many
  should run where).

Measurement (``LocationMemory``): per location, an exponentially weighted availability (as
``smoothed_availability``), and exponentially weighted serving worker-seconds and
preemptions, whose ratio is the mean spot lifetime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from inferbatch.policy.escalation import (
    AVAILABILITY_HALFLIFE_S,
    BatchState,
    ClusterState,
    Decision,
    Policy,
    smoothed_availability,
)


@dataclass(frozen=True, slots=True)
class LocationState:
    """One location (zone or region) at ``now``, as measured by the caller."""

    name: str
    spot_price_ratio: float
    """Spot price here / dedicated price per worker-second."""
    boot_s: float
    """Seconds from asking for a spot worker here to it serving."""
    capacity: int
    """Spot workers the location grants now (a spot request here would be fulfilled)."""
    spot_workers: int = 0
    """Spot workers running here now, serving or booting, not draining."""
    spot_workers_up: int = 0
    """Of those, the ones serving."""
    availability: float = 1.0
    """Measured share of recent time with spot capacity here."""
    mean_lifetime_s: float = math.inf
    """Measured mean seconds a spot worker serves here before a preemption (inf: none seen)."""

    @property
    def effective_price(self) -> float:
        """Spot price per useful worker-second, counting a boot per lifetime as lost."""
        if self.mean_lifetime_s == math.inf:
            return self.spot_price_ratio
        return self.spot_price_ratio * (1.0 + self.boot_s / max(1.0, self.mean_lifetime_s))


@dataclass(frozen=True, slots=True)
class LocationPlan:
    """What to run where: ``spot_workers[location]`` (serving or starting) for each spot
    autoscaler, ``dedicated_workers[location]`` for each dedicated one, and the escalation
    ``decision`` (moves, hold) of the policy on the union of the spot capacity."""

    decision: Decision
    spot_workers: Mapping[str, int] = field(default_factory=dict)
    dedicated_workers: Mapping[str, int] = field(default_factory=dict)


MIGRATION_MARGIN = 0.1
"""A running spot worker moves only to a location whose effective price is lower by more
than this share: measured lifetimes drift tick by tick, and without a margin workers would
shuttle between locations of about the same price, each move paying a boot."""


def _order(locations: Sequence[LocationState]) -> list[LocationState]:
    """Cheapest effective price first; ties: higher availability, then name."""
    return sorted(locations, key=lambda z: (z.effective_price, -z.availability, z.name))


def place_spot(
    locations: Sequence[LocationState], fleet: int, migration_margin: float = MIGRATION_MARGIN
) -> dict[str, int]:
    """Spot workers to run per location, ``fleet`` at most in total, never more than a
    location's ``capacity``.

    Workers already running stay (within capacity); the rest of the fleet goes to the
    locations with capacity left, cheapest effective price first, spread one by one over
    those within ``migration_margin`` of the cheapest (fewest planned first); then a running worker
    moves from the dearest location to a cheaper one with room while the cheaper one's
    effective price is below ``(1 - migration_margin)`` times the dearer one's. A location
    with no capacity gets nothing.
    """
    order = _order(locations)
    rank = {z.name: i for i, z in enumerate(order)}
    plan = {z.name: min(z.spot_workers, z.capacity) for z in order}
    spare = max(0, fleet - sum(plan.values()))
    while spare > 0:  # kept workers may exceed the fleet after it shrank: never add then
        room = [z for z in order if plan[z.name] < z.capacity]
        if not room:
            break
        # Spread over the locations about as cheap as the cheapest (within the margin):
        # one location's outage then takes only its share of the fleet, not all of it.
        tier = [
            z
            for z in room
            if z.effective_price * (1.0 - migration_margin) <= room[0].effective_price
        ]
        chosen = min(tier, key=lambda z: (plan[z.name], rank[z.name]))
        plan[chosen.name] += 1
        spare -= 1
    excess = sum(plan.values()) - fleet
    for z in reversed(order):  # a fleet smaller than what runs: the dearest go first
        if excess <= 0:
            break
        cut = min(excess, plan[z.name])
        plan[z.name] -= cut
        excess -= cut
    for cheap in order:
        for dear in reversed(order):
            if cheap.effective_price >= (1.0 - migration_margin) * dear.effective_price:
                break
            moved = min(cheap.capacity - plan[cheap.name], plan[dear.name])
            if moved > 0:
                plan[cheap.name] += moved
                plan[dear.name] -= moved
    return plan


def union_cluster(cluster: ClusterState, locations: Sequence[LocationState]) -> ClusterState:
    """``cluster`` with the spot fields of the union of ``locations``: spot workers serving
    anywhere, and (an upper estimate of) the share of time some location had spot, the
    largest of the locations' availabilities. Only the ski-rental hold reads it; the
    invariant never does. With no locations, ``cluster`` unchanged."""
    if not locations:
        return cluster
    return replace(
        cluster,
        spot_workers_up=sum(z.spot_workers_up for z in locations),
        spot_availability=max(z.availability for z in locations),
    )


def plan_locations(
    policy: Policy,
    now: float,
    batches: Sequence[BatchState],
    cluster: ClusterState,
    locations: Sequence[LocationState],
    fleet: int,
    dedicated_location: str | None = None,
) -> LocationPlan:
    """One tick of the policy across locations: the escalation ``decision`` on the union of
    the spot capacity, the spot fleet placed by ``place_spot`` (none when the policy uses
    no spot), and every dedicated worker in ``dedicated_location`` (default: the first
    location; dedicated capacity is not preempted, so where it runs changes no deadline)."""
    decision = policy.decide(now, batches, union_cluster(cluster, locations))
    spot = place_spot(locations, fleet if policy.uses_spot else 0)
    home = dedicated_location or (locations[0].name if locations else "")
    return LocationPlan(decision, spot, {home: decision.dedicated_workers_desired})


@dataclass
class LocationMemory:
    """What the scheduler measures per location between ticks: availability, and the mean
    spot lifetime as exponentially weighted serving worker-seconds over preemptions (both
    forgetting with the same half-life as the availability)."""

    halflife_s: float = AVAILABILITY_HALFLIFE_S
    availability: float = 1.0
    served_s: float = 0.0
    preemptions: float = 0.0
    last_seen: float | None = None

    def observe(self, now: float, spot_up: bool, serving: int, preempted: int) -> None:
        """Record a tick: whether the location had spot capacity, the spot workers serving
        there, and how many were preempted since the last call."""
        if self.last_seen is not None:
            elapsed = max(0.0, now - self.last_seen)
            decay: float = 0.5 ** (elapsed / self.halflife_s)
            self.availability = smoothed_availability(
                self.availability, spot_up, elapsed, self.halflife_s
            )
            self.served_s = decay * self.served_s + serving * elapsed
            self.preemptions *= decay
        self.preemptions += preempted
        self.last_seen = now

    @property
    def mean_lifetime_s(self) -> float:
        """Mean serving seconds per preemption; inf until one was seen."""
        return self.served_s / self.preemptions if self.preemptions > 0 else math.inf


PROBE_S = 600.0
"""How long a location found out of spot capacity is left alone before one more worker is
asked of it again (a probe: a spot request that is not fulfilled costs nothing but the
wait, and its work is placed elsewhere meanwhile)."""


@dataclass
class CapacityWatch:
    """A location's spot capacity, inferred from what its autoscaler was asked for and
    what serves there (a live scheduler sees no cloud API; the simulator reads the trace).

    - Unknown until shown otherwise: a location is assumed to grant the whole fleet.
    - Short: when fewer workers serve than were asked for, for longer than ``grace_s`` (the
      location's boot time and some slack), its capacity is taken to be what serves there
      (the ceiling), so the placement asks the rest of the fleet of other locations.
    - Probe: ``probe_s`` after that, the capacity is the ceiling plus one, so a cheap
      location that recovered gets asked for a worker again. A probe that is fulfilled
      (more serve than the ceiling) lifts the ceiling; one that is not sets it again and
      waits another ``probe_s``.
    """

    grace_s: float
    probe_s: float = PROBE_S
    ceiling: int | None = None
    short_since: float | None = None
    probe_at: float = 0.0

    def observe(self, now: float, asked: int, serving: int) -> None:
        """Record a tick: ``asked`` spot workers were wanted here (what was published at the
        previous tick), ``serving`` serve here now."""
        if serving >= asked:
            self.short_since = None
            if self.ceiling is not None and serving > self.ceiling:
                self.ceiling = None
            return
        if self.short_since is None:
            self.short_since = now
        elif now - self.short_since >= self.grace_s:
            self.ceiling = serving
            self.probe_at = now + self.probe_s
            self.short_since = None

    def capacity(self, now: float, fleet: int) -> int:
        """Spot workers the placement may ask of this location now (``fleet`` if unknown)."""
        if self.ceiling is None:
            return fleet
        if now >= self.probe_at:
            return min(fleet, self.ceiling + 1)
        return min(fleet, self.ceiling)

    @property
    def has_spot(self) -> bool:
        """Whether the location is believed to have spot capacity now."""
        return self.ceiling is None or self.ceiling > 0


def preemptions(departed: int, serving_before: int, asked_before: int) -> int:
    """Of the spot workers that stopped serving at a location since the last tick
    (``departed``), those the cloud took: the ones beyond the scale-down that was asked
    (``serving_before`` down to ``asked_before``)."""
    return max(0, departed - max(0, serving_before - asked_before))


def make_before_break(plan: Mapping[str, int], serving: Mapping[str, int]) -> dict[str, int]:
    """The targets to publish for ``plan``: while some location serves fewer spot workers
    than planned (replacements still booting, or a location that turns out to be short), no
    location is asked to go below what serves there now, so moving work between locations
    never leaves a gap. Once every planned worker serves, ``plan`` itself."""
    names = set(plan) | set(serving)
    if all(serving.get(n, 0) >= plan.get(n, 0) for n in names):
        return {n: plan.get(n, 0) for n in names}
    return {n: max(plan.get(n, 0), serving.get(n, 0)) for n in names}
