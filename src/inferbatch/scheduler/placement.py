"""Where the spot fleet runs: the escalate duty's view of each spot location.

Locations are the configured ones (``INFERBATCH_SPOT_LOCATIONS``, with their prices and
boot times) and any other a serving spot worker declares (with the deployment's spot price
and the default boot time). Each tick, from the spot workers serving per location (their
ids) and the targets published at the previous tick, it

- infers each location's capacity (``policy.locations.CapacityWatch``: asked for and not
  served within the boot time means the location is short),
- counts preemptions: workers that stopped serving beyond the scale-down that was asked,
- feeds each location's ``LocationMemory`` (availability, mean spot lifetime),

and hands ``policy.locations.plan_locations`` the ``LocationState`` of every location. The
plan's spot targets are published make-before-break (``make_before_break``). Nothing here
does I/O: the duty passes the rows in.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from inferbatch.config import Settings, SpotLocation
from inferbatch.policy.escalation import BatchState
from inferbatch.policy.locations import (
    CapacityWatch,
    LocationMemory,
    LocationState,
    make_before_break,
    preemptions,
)

GRACE_FACTOR = 1.5
"""A location is short once a worker asked of it has not served for this many boot times
(plus a tick): boots vary, and a location declared short too early sends work away from
capacity that was about to serve."""


@dataclass
class _Location:
    config: SpotLocation
    watch: CapacityWatch
    memory: LocationMemory = field(default_factory=LocationMemory)
    serving: frozenset[str] = frozenset()
    """Ids of the spot workers that served here at the last tick."""
    asked: int = 0
    """The target published for this location at the last tick."""


@dataclass
class SpotPlacement:
    settings: Settings
    locations: dict[str, _Location] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for config in self.settings.spot_locations:
            self._add(config)

    def _add(self, config: SpotLocation) -> _Location:
        grace = GRACE_FACTOR * config.boot_seconds + self.settings.scheduler_tick_seconds
        watch = CapacityWatch(grace_s=grace, probe_s=self.settings.location_probe_seconds)
        self.locations[config.name] = tracked = _Location(config, watch)
        return tracked

    @property
    def active(self) -> bool:
        """Whether there is any location to place spot workers in."""
        return bool(self.locations)

    @property
    def dedicated_location(self) -> str:
        return self.settings.dedicated_location or next(iter(self.locations), "")

    def observe(
        self, now: float, serving: Mapping[str, Collection[str]], fleet: int
    ) -> list[LocationState]:
        """Each location's state at ``now``, from the ids of the spot workers serving in
        each (a location not seen before is added) and the ``fleet`` to be placed."""
        for name in serving:
            if name not in self.locations:
                self._add(SpotLocation(name=name))
        states = []
        for name, z in self.locations.items():
            now_serving = frozenset(serving.get(name, ()))
            departed = len(z.serving - now_serving)
            preempted = preemptions(departed, len(z.serving), z.asked)
            z.watch.observe(now, z.asked, len(now_serving))
            z.memory.observe(now, z.watch.has_spot, len(now_serving), preempted)
            z.serving = now_serving
            price = z.config.spot_price_ratio or self.settings.spot_price_ratio
            states.append(
                LocationState(
                    name=name,
                    spot_price_ratio=price,
                    boot_s=z.config.boot_seconds,
                    capacity=z.watch.capacity(now, fleet),
                    # asked and not yet serving counts as booting: kept where it was asked
                    spot_workers=max(len(now_serving), z.asked),
                    spot_workers_up=len(now_serving),
                    availability=z.memory.availability,
                    mean_lifetime_s=z.memory.mean_lifetime_s,
                )
            )
        return states

    def fleet(self, batches: Sequence[BatchState]) -> int:
        """Spot workers wanted in all: enough for every request queued or running on spot
        to hold a slot, at most ``max_spot_workers``."""
        work = sum(b.queued_spot + b.running_spot for b in batches)
        wanted = math.ceil(work / max(1, self.settings.engine_max_in_flight))
        cap = self.settings.max_spot_workers
        return wanted if cap is None else min(wanted, cap)

    def targets(self, plan: Mapping[str, int]) -> dict[str, int]:
        """The spot targets to publish for ``plan`` (make before break), remembered as what
        was asked of each location for the next tick's inference."""
        serving = {name: len(z.serving) for name, z in self.locations.items()}
        published = make_before_break(plan, serving)
        for name, z in self.locations.items():
            z.asked = published.get(name, 0)
        return published

    def describe(self, now: float, fleet: int) -> dict[str, dict[str, float | int | None]]:
        """Per location, what the duty believes (published for ``/metrics`` and operators)."""
        return {
            name: {
                "capacity": z.watch.capacity(now, fleet),
                "serving": len(z.serving),
                "availability": round(z.memory.availability, 4),
                "mean_lifetime_s": None
                if z.memory.mean_lifetime_s == math.inf
                else round(z.memory.mean_lifetime_s, 1),
            }
            for name, z in self.locations.items()
        }
