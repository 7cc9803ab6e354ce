"""The escalate duty: run the SLA policy on database snapshots and apply its decision.

Each tick: count every in-progress batch's unsettled requests by status and pool, measure
recent service times and live workers, ask the policy (``inferbatch.policy``, the same
code the simulator replays against spot traces) which queued spot requests must move to
the dedicated pool and how many dedicated workers are needed, move them with the reason
recorded on each request, and publish the desired dedicated worker count (held through a
scale-down window) for the autoscaler and ``/metrics``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from inferbatch.config import Settings
from inferbatch.db import escalation as rows
from inferbatch.db.types import Pool
from inferbatch.metrics import SchedulerMetrics
from inferbatch.policy.escalation import (
    BatchState,
    ClusterState,
    Decision,
    Policy,
    autoscale_target,
)

log = logging.getLogger(__name__)

DEFAULT_SERVICE_SECONDS = 30.0
"""Assumed per-request service time before any request has finished."""


@dataclass
class EscalationLoop:
    settings: Settings
    pool: Pool
    policy: Policy
    metrics: SchedulerMetrics | None = None
    recent: tuple[tuple[float, int], ...] = field(default=())

    def cluster(self, live: dict[str, int]) -> ClusterState:
        s = self.settings
        return ClusterState(
            slots_per_worker=s.engine_max_in_flight,
            max_dedicated_workers=s.max_dedicated_workers,
            dedicated_cold_start_s=s.dedicated_cold_start_seconds,
            tick_s=s.scheduler_tick_seconds,
            interruption_notice_s=s.spot_interruption_notice_seconds,
            spot_workers_up=live.get("spot", 0),
            dedicated_workers_up=live.get("dedicated", 0),
        )

    async def tick(self) -> Decision:
        async with self.pool.connection() as conn:
            snapshot = await rows.unfinished_batches(conn)
            mean, longest = await rows.service_times(conn)
            live = await rows.live_workers(conn)
        mean = mean or DEFAULT_SERVICE_SECONDS
        batches = [
            BatchState(
                batch_id=r["id"],
                created_at=r["created_at"],
                deadline_at=r["deadline_at"],
                total=r["total"],
                queued_spot=r["queued_spot"],
                queued_dedicated=r["queued_dedicated"],
                running_spot=r["running_spot"],
                running_dedicated=r["running_dedicated"],
                mean_service_seconds=mean,
                # before anything finished, the longest a request may take is the timeout
                tail_service_seconds=longest or self.settings.engine_timeout_seconds,
            )
            for r in snapshot
        ]
        now = time.time()
        decision = self.policy.decide(now, batches, self.cluster(live))
        desired, self.recent = autoscale_target(now, decision, self.recent)
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
            await rows.publish(conn, rows.DESIRED_DEDICATED, desired)
            await rows.publish(conn, rows.BATCHES_AT_RISK, len(decision.at_risk))
        return decision
