"""The escalate duty: run the SLA policy on database snapshots and apply its decision.

Each tick: count every in-progress batch's unsettled requests by status and pool, measure
recent service times per model, live workers, spot availability (smoothed over hours) and
the dedicated workers asked for but still starting, ask the policy (``inferbatch.policy``, the same
code the simulator replays against spot traces) which queued spot requests must move to
the dedicated pool and how many dedicated workers are needed, move them with the reason
recorded on each request, and publish the desired dedicated worker count (held through a
scale-down window) for the autoscaler and ``/metrics``. From the same snapshot: each batch's
estimated completion (``policy/eta.py``; stored where it moved), and the measured service
times and throughput efficiency (published for admission at create).

With spot locations (configured, or declared by spot workers) the tick plans across them
instead (``policy.locations.plan_locations`` via ``scheduler.placement``): escalation on
the union of their spot capacity, the spot fleet placed by effective price, and the desired
spot and dedicated workers published per location for one autoscaler each.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from inferbatch.config import Settings
from inferbatch.db import escalation as rows
from inferbatch.db import locations as location_rows
from inferbatch.db.types import Pool
from inferbatch.metrics import SchedulerMetrics
from inferbatch.policy import eta
from inferbatch.policy.escalation import (
    BatchState,
    ClusterState,
    Decision,
    FleetMemory,
    Policy,
    autoscale_target,
)
from inferbatch.policy.locations import plan_locations
from inferbatch.scheduler.placement import SpotPlacement

log = logging.getLogger(__name__)

MIN_SAMPLES = 30
"""Finished requests needed before measured service times replace the configured prior:
the first to finish are the short ones, so a small sample is biased low (the simulator
uses the same rule)."""


_UNSETTLED = ("queued_spot", "queued_dedicated", "running_spot", "running_dedicated")


def _unsettled(row: dict[str, Any]) -> int:
    """Requests of a snapshot row that are queued or running, on either pool."""
    return sum(int(row[k]) for k in _UNSETTLED)


@dataclass
class EscalationLoop:
    settings: Settings
    pool: Pool
    policy: Policy
    metrics: SchedulerMetrics | None = None
    recent: tuple[tuple[float, int], ...] = field(default=())
    desired: int = 0
    """The dedicated worker count last published."""
    fleet: FleetMemory = field(init=False)
    meter: eta.ThroughputMeter = field(default_factory=eta.ThroughputMeter)
    placement: SpotPlacement = field(init=False)

    def __post_init__(self) -> None:
        self.fleet = FleetMemory(cold_start_s=self.settings.dedicated_cold_start_seconds)
        self.placement = SpotPlacement(self.settings)

    def cluster(self, live: dict[str, int], now: float) -> ClusterState:
        s, fleet = self.settings, self.fleet
        return ClusterState(
            slots_per_worker=s.engine_max_in_flight,
            max_dedicated_workers=s.max_dedicated_workers,
            dedicated_cold_start_s=s.dedicated_cold_start_seconds,
            tick_s=s.scheduler_tick_seconds,
            interruption_notice_s=s.spot_interruption_notice_seconds,
            spot_workers_up=live.get("spot", 0),
            spot_availability=fleet.availability,
            dedicated_workers_up=live.get("dedicated", 0),
            dedicated_boot_remaining_s=fleet.boot_remaining(now),
            spot_price_ratio=s.spot_price_ratio,
        )

    def service(
        self, model: str | None, times: dict[str | None, tuple[float, float, int]]
    ) -> tuple[float, float]:
        """(mean, tail) service seconds for a batch of ``model``: measured for that model,
        else over all models, once enough finished; before that the configured prior mean,
        and the engine timeout as the longest a request may take."""
        for key in (model, None):
            measured = times.get(key)
            if measured is not None and measured[2] >= MIN_SAMPLES:
                return measured[0], measured[1]
        seen = max((t[1] for t in times.values()), default=0.0)
        return self.settings.service_seconds_prior, max(seen, self.settings.engine_timeout_seconds)

    def batch_state(
        self, row: dict[str, Any], times: dict[str | None, tuple[float, float, int]]
    ) -> BatchState:
        """A batch as the policy sees it (see :meth:`service`)."""
        mean, tail = self.service(row["model"], times)
        return BatchState(
            batch_id=row["id"],
            created_at=row["created_at"],
            deadline_at=row["deadline_at"],
            total=row["total"],
            queued_spot=row["queued_spot"],
            queued_dedicated=row["queued_dedicated"],
            running_spot=row["running_spot"],
            running_dedicated=row["running_dedicated"],
            mean_service_seconds=mean,
            tail_service_seconds=tail,
            priority=row["priority"],
        )

    def estimates(
        self,
        now: float,
        snapshot: list[dict[str, Any]],
        times: dict[str | None, tuple[float, float, int]],
        live: dict[str, int],
    ) -> tuple[dict[str, datetime | None], float | None]:
        """The estimated completions that moved enough to be stored (``eta.moved``), and
        the measured throughput efficiency. Capacity: the workers up, and the dedicated
        workers asked for but still starting, each from its remaining cold start."""
        per = self.settings.engine_max_in_flight
        slots = (live.get("spot", 0) + live.get("dedicated", 0)) * per
        efficiency = self.meter.efficiency(lambda model: self.service(model, times)[0])
        later = tuple((left, per) for left in self.fleet.boot_remaining(now))
        work = [
            eta.Work(
                batch_id=r["id"],
                priority=r["priority"],
                deadline_at=r["deadline_at"],
                created_at=r["created_at"],
                queued=r["queued_spot"] + r["queued_dedicated"],
                running=r["running_spot"] + r["running_dedicated"],
                service_s=self.service(r["model"], times)[0],
            )
            for r in snapshot
        ]
        stored = {r["id"]: r["estimated_completion_at"] for r in snapshot}
        new = eta.estimate(now, work, eta.Capacity(slots, later, efficiency))
        moved = {
            batch_id: datetime.fromtimestamp(t, UTC) if t is not None else None
            for batch_id, t in new.items()
            if eta.moved(stored[batch_id], t, now)
        }
        return moved, efficiency

    def plan(
        self,
        now: float,
        batches: list[BatchState],
        cluster: ClusterState,
        serving: dict[str, set[str]],
    ) -> tuple[Decision, dict[str, Any]]:
        """The decision, and what to publish per location (nothing without locations)."""
        placement = self.placement
        fleet = placement.fleet(batches)
        states = placement.observe(now, serving, fleet)
        if not placement.active:
            return self.policy.decide(now, batches, cluster), {}
        plan = plan_locations(
            self.policy, now, batches, cluster, states, fleet, placement.dedicated_location
        )
        return plan.decision, {
            location_rows.DESIRED_SPOT_BY_LOCATION: placement.targets(plan.spot_workers),
            location_rows.SPOT_LOCATIONS: placement.describe(now, fleet),
        }

    async def tick(self) -> Decision:
        async with self.pool.connection() as conn:
            snapshot = await rows.unfinished_batches(conn)
            times = await rows.service_times(conn)
            live = await rows.live_workers(conn)
            serving = await rows.serving_spot_workers(conn)
        now = time.time()
        fleet = self.fleet
        fleet.observe(now, live.get("spot", 0), live.get("dedicated", 0), self.desired)
        up = live.get("spot", 0) + live.get("dedicated", 0)
        unsettled = {r["id"]: (r["model"], _unsettled(r)) for r in snapshot}
        self.meter.observe(now, unsettled, up * self.settings.engine_max_in_flight)
        batches = [self.batch_state(r, times) for r in snapshot]
        decision, by_location = self.plan(now, batches, self.cluster(live, now), serving)
        desired, self.recent = autoscale_target(now, decision, self.recent)
        fleet.ask(now, desired, live.get("dedicated", 0))
        self.desired = desired
        if by_location:
            home = self.placement.dedicated_location
            by_location[location_rows.DESIRED_DEDICATED_BY_LOCATION] = {home: desired}
        estimates, efficiency = self.estimates(now, snapshot, times, live)
        async with self.pool.connection() as conn:
            for batch_id, n in decision.moves.items():
                if n > 0:
                    reason = decision.reasons.get(batch_id, self.policy.name)
                    moved = await rows.move_to_dedicated(conn, batch_id, n, reason)
                    if moved:
                        log.info(
                            "batch %s: %d requests to dedicated (%s)",
                            batch_id,
                            moved,
                            reason,
                            extra={"batch_id": batch_id},
                        )
                        if self.metrics:
                            self.metrics.escalated({reason: moved})
            # only while no dedicated worker is held either (``autoscale_target``)
            for batch_id, n in decision.returns.items() if desired == 0 else ():
                returned = await rows.return_to_spot(conn, batch_id, n)
                if returned:
                    log.info(
                        "batch %s: %d requests back to spot (no dedicated worker runs)",
                        batch_id,
                        returned,
                        extra={"batch_id": batch_id},
                    )
            await rows.publish(
                conn,
                {
                    rows.DESIRED_DEDICATED: desired,
                    rows.BATCHES_AT_RISK: len(decision.at_risk),
                    rows.SPOT_ENABLED: int(self.policy.uses_spot),
                    rows.SERVICE_SECONDS: {
                        "*" if model is None else model: mean
                        for model, (mean, _, n) in times.items()
                        if n >= MIN_SAMPLES
                    },
                    rows.EFFICIENCY: efficiency,
                    **by_location,
                },
            )
            await rows.record_estimates(conn, estimates)
        return decision
