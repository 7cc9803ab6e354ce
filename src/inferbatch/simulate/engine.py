"""Event simulation of the queue, the workers and the scheduler tick, on a spot trace.

It mirrors the real system: requests start in the spot pool; workers claim in the queue's
order (batch creation, then request order), keep ``slots_per_worker`` requests in flight,
and dedicated workers take spot-pool work when their own pool is empty; every ``tick_s``
the scheduler ingests arrived batches, builds the policy's snapshot from what it can
measure (counts, finished requests' service times, live workers) and applies the
``Decision``: moves, then the dedicated autoscaler target. Per request, the policy's
``escalation`` rule runs whenever a request goes back to the queue.

The dedicated autoscaler scales down only as far as the policy's ``hold_s`` allows
(``autoscale_target``, the same helper the scheduler uses).

Spot: the trace sets how many spot workers may exist. When it drops, the victims get the
cloud's notice that long before the drop (it is known to the replay, not to the policy):
they stop claiming, requests that finish before the drop finish, the others go back to the
queue at once and their work is lost. New capacity serves after ``spot_cold_start_s``.
Several zones (``zones``): each replays its own trace with its own spot price and boot time.
The policy runs on the union of the zones' spot capacity and places the spot fleet
(``ClusterSpec.spot_workers`` in all) on them each tick (``policy.locations.plan_locations``);
a worker started in a zone serves after that zone's boot time, and one the plan moves away
drains only once the fleet's serving workers exceed the plan (make before break). With one
zone and no placement, spot workers follow the trace at once, as below.

Dedicated workers serve ``dedicated_cold_start_s`` after the autoscaler asks for them and
drain (finish what they run) when asked to stop. A batch still unfinished at its deadline
expires like in the real system: queued requests are dropped, running ones abandoned.

Accounting (worker-seconds, one worker = one GPU): a request that ran ``s`` seconds used
``s / slots`` of its worker. Spot is billed for the work it ran, useful or lost (the spot
fleet is sized by the cloud and the queue; idle spot nodes are not charged); dedicated is
billed for every second a worker exists, starting and idle included, since the policy
chooses how many exist.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from inferbatch.policy.escalation import (
    BatchState,
    ClusterState,
    Decision,
    Policy,
    autoscale_target,
    escalate_request,
    smoothed_availability,
)
from inferbatch.policy.locations import LocationMemory, LocationState, plan_locations
from inferbatch.simulate.traces import SpotTrace
from inferbatch.simulate.workload import ClusterSpec, SimBatch

_COMPLETE, _READY, _NOTICE, _CAPACITY, _DEADLINE, _TICK = range(6)


class _Request:
    __slots__ = ("batch", "failures", "failures_left", "interruptions", "service")

    def __init__(self, batch: _Batch, service: float, failures_left: int) -> None:
        self.batch = batch
        self.service = service
        self.failures_left = failures_left
        self.failures = 0
        self.interruptions = 0


class _Batch:
    __slots__ = (
        "closed",
        "created",
        "deadline",
        "dedicated",
        "done",
        "finished_at",
        "id",
        "index",
        "priority",
        "running_dedicated",
        "running_spot",
        "spot",
        "total",
    )

    def __init__(self, spec: SimBatch, index: int) -> None:
        self.id = spec.batch_id
        self.index = index
        self.created = spec.arrival
        self.deadline = spec.deadline
        self.priority = spec.priority
        self.total = len(spec.service)
        self.spot = deque(
            _Request(self, s, f) for s, f in zip(spec.service, spec.failures, strict=True)
        )
        self.dedicated: deque[_Request] = deque()
        self.running_spot = self.running_dedicated = self.done = 0
        self.closed = False
        self.finished_at: float | None = None


class _Worker:
    __slots__ = ("jobs", "kill_at", "leaving", "ready_at", "serving", "spot", "started", "zone")

    def __init__(
        self, spot: bool, started: float, ready_at: float, zone: _Zone | None = None
    ) -> None:
        self.spot = spot
        self.zone = zone
        self.started = started
        self.ready_at = ready_at
        self.serving = False
        self.leaving = False
        self.kill_at = 0.0
        self.jobs: dict[_Job, None] = {}  # insertion-ordered set


@dataclass(frozen=True, slots=True)
class Zone:
    """One spot location of a multi-zone run: its trace, spot price (/ dedicated) and the
    seconds a spot worker started there takes to serve."""

    name: str
    trace: SpotTrace
    spot_price_ratio: float
    boot_s: float


class _Zone:
    """A zone's replay state: trace position, capacity, and what the scheduler measures."""

    __slots__ = ("cap_index", "capacity", "memory", "notice", "preempted", "spec", "target")

    def __init__(self, spec: Zone, notice: float, halflife_s: float) -> None:
        self.spec = spec
        self.notice = notice
        self.capacity = 0
        self.cap_index = 0
        self.target: int | None = None  # None: follow the trace (one zone, no placement)
        self.memory = LocationMemory(halflife_s)
        self.preempted = 0  # since the last tick


class _Job:
    __slots__ = ("end", "live", "request", "start", "worker")

    def __init__(self, request: _Request, worker: _Worker, start: float) -> None:
        self.request = request
        self.worker = worker
        self.start = start
        self.end = start + request.service
        self.live = True


@dataclass(slots=True)
class SimOutcome:
    """What happened, for ``report``. Work in worker-seconds, times in seconds."""

    batches: list[tuple[SimBatch, float | None]] = field(default_factory=list)
    """Each batch with the time its last request finished (None: expired unfinished)."""
    useful_spot: float = 0.0
    useful_dedicated: float = 0.0
    wasted_spot: float = 0.0
    wasted_dedicated: float = 0.0
    dedicated_billed: float = 0.0
    interruptions: int = 0
    escalated_requests: int = 0
    moved_requests: int = 0
    returned_requests: int = 0
    """Queued dedicated requests sent back to spot (``Decision.returns``)."""
    dedicated_starts: int = 0
    end: float = 0.0
    zone_useful: dict[str, float] = field(default_factory=dict)
    """Useful spot work per zone."""
    zone_wasted: dict[str, float] = field(default_factory=dict)
    """Lost spot work per zone (interruptions, failures, expiry)."""
    spot_starts: dict[str, int] = field(default_factory=dict)
    """Spot workers started per zone (each paid that zone's boot)."""


class Simulation:
    """One run: ``Simulation(policy, trace, cluster, batches).run()``. Deterministic: the
    workload carries every random draw, events at equal times run in creation order."""

    def __init__(
        self,
        policy: Policy,
        trace: SpotTrace,
        cluster: ClusterSpec,
        batches: Sequence[SimBatch],
        service_prior: tuple[float, float],
        spot_price_ratio: float = 0.3,
        zones: Sequence[Zone] = (),
    ) -> None:
        """``service_prior``: (mean, longest) seconds a request holds a slot, what the
        scheduler assumes before it has measured enough finished requests (configured).
        ``zones``: several spot locations placed by ``plan_locations`` (``trace`` and
        ``spot_price_ratio`` are then unused); empty: ``trace`` alone. One zone (or
        none) is followed at once, exactly as a single-zone run."""
        self.policy = policy
        self.c = cluster
        self.slots = cluster.slots_per_worker
        self.placed = len(zones) > 1  # one zone: follow its trace, as a single-zone run
        specs = list(zones) or [
            Zone(trace.name, trace, spot_price_ratio, cluster.spot_cold_start_s)
        ]
        self.zones = [
            _Zone(
                z,
                z.trace.notice_seconds if cluster.notice_s is None else cluster.notice_s,
                cluster.availability_halflife_s,
            )
            for z in specs
        ]
        if self.placed:
            for z in self.zones:
                z.target = 0
        self.notice = min(z.notice for z in self.zones)
        self.specs = sorted(batches, key=lambda b: b.arrival)
        self.out = SimOutcome()
        self.now = 0.0
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = itertools.count()
        self.open: list[_Batch] = []  # in the queue's claim order
        self.spot_workers: list[_Worker] = []
        self.dedicated_workers: list[_Worker] = []
        self.availability = 1.0
        self.obs_n = 0
        self.obs_sum = self.obs_max = 0.0
        self.prior_mean, self.prior_tail = service_prior
        # the hold's price: what spot work would cost where it is cheapest
        self.spot_price_ratio = min(z.spec.spot_price_ratio for z in self.zones)
        self.recent_targets: tuple[tuple[float, int], ...] = ()  # autoscale_target's state

    # -- event plumbing --------------------------------------------------------------------

    def _at(self, t: float, kind: int, payload: object = None) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, payload))

    def run(self) -> SimOutcome:
        for zone in self.zones:
            self._capacity_change(zone)
        self._at(0.0, _TICK)
        arrivals = 0
        while self.heap:
            t, _, kind, payload = heapq.heappop(self.heap)
            self.now = t
            if kind == _COMPLETE:
                assert isinstance(payload, _Job)
                if payload.live:
                    self._complete(payload)
            elif kind == _TICK:
                while arrivals < len(self.specs) and self.specs[arrivals].arrival <= t:
                    self._ingest(self.specs[arrivals])
                    arrivals += 1
                self.open = [b for b in self.open if not b.closed]
                if arrivals == len(self.specs) and not self.open:
                    break
                self._tick()
                self._at(t + self.c.tick_s, _TICK)
            elif kind == _READY:
                assert isinstance(payload, _Worker)
                if not payload.leaving:
                    payload.serving = True
                    self._fill(payload)
            elif kind == _NOTICE:
                assert isinstance(payload, tuple)
                self._notice(*payload)
            elif kind == _CAPACITY:
                assert isinstance(payload, _Zone)
                self._capacity_change(payload)
            elif kind == _DEADLINE:
                assert isinstance(payload, _Batch)
                self._expire(payload)
        for w in self.dedicated_workers:
            self._stop(w)
        self.out.end = self.now
        return self.out

    # -- batches and requests --------------------------------------------------------------

    def _ingest(self, spec: SimBatch) -> None:
        batch = _Batch(spec, len(self.out.batches))
        # the queue's claim order: priority, earliest deadline (ties: the oldest batch)
        bisect.insort(self.open, batch, key=lambda b: (-b.priority, b.deadline, b.created))
        self.out.batches.append((spec, None))
        self._at(spec.deadline, _DEADLINE, batch)

    def _claim(self, worker: _Worker) -> _Request | None:
        """The next request for ``worker``: own pool first, then spot (takes_spot)."""
        if not worker.spot:
            for b in self.open:
                if b.dedicated:
                    return b.dedicated.popleft()
        for b in self.open:
            if b.spot:
                return b.spot.popleft()
        return None

    def _fill(self, worker: _Worker) -> None:
        while worker.serving and not worker.leaving and len(worker.jobs) < self.slots:
            request = self._claim(worker)
            if request is None:
                return
            job = _Job(request, worker, self.now)
            worker.jobs[job] = None
            if worker.spot:
                request.batch.running_spot += 1
            else:
                request.batch.running_dedicated += 1
            self._at(job.end, _COMPLETE, job)

    def _fill_all(self) -> None:
        slots = self.slots
        for workers in (self.dedicated_workers, self.spot_workers):
            for w in workers:
                if w.serving and not w.leaving and len(w.jobs) < slots:
                    self._fill(w)

    def _end_job(self, job: _Job) -> None:
        job.live = False
        del job.worker.jobs[job]
        if job.worker.spot:
            job.request.batch.running_spot -= 1
        else:
            job.request.batch.running_dedicated -= 1

    def _waste(self, job: _Job) -> None:
        lost = (self.now - job.start) / self.slots
        if job.worker.spot:
            self.out.wasted_spot += lost
            name = job.worker.zone.spec.name if job.worker.zone is not None else ""
            self.out.zone_wasted[name] = self.out.zone_wasted.get(name, 0.0) + lost
        else:
            self.out.wasted_dedicated += lost

    def _complete(self, job: _Job) -> None:
        self._end_job(job)
        request, worker = job.request, job.worker
        batch = request.batch
        if request.failures_left > 0:
            request.failures_left -= 1
            request.failures += 1
            self._waste(job)
            self._requeue(request)
        else:
            if worker.spot:
                self.out.useful_spot += request.service / self.slots
                name = worker.zone.spec.name if worker.zone is not None else ""
                zone_useful = self.out.zone_useful
                zone_useful[name] = zone_useful.get(name, 0.0) + request.service / self.slots
            else:
                self.out.useful_dedicated += request.service / self.slots
            batch.done += 1
            self.obs_n += 1
            self.obs_sum += request.service
            self.obs_max = max(self.obs_max, request.service)
            if batch.done == batch.total:
                self._close(batch, finished=True)
        if worker.leaving and not worker.jobs and not worker.spot:
            self._stop(worker)
        elif worker.leaving and not worker.jobs and worker.kill_at == math.inf:
            self.spot_workers.remove(worker)  # a drained spot worker the plan moved away
        else:
            self._fill(worker)

    def _requeue(self, request: _Request) -> None:
        """Back to the queue: to dedicated when the per-request rule says so."""
        if request.batch.closed:
            return
        reason = escalate_request(request.interruptions, request.failures, self.policy.escalation)
        if reason is not None:
            self.out.escalated_requests += 1
            request.batch.dedicated.append(request)
        else:
            request.batch.spot.appendleft(request)

    def _close(self, batch: _Batch, finished: bool) -> None:
        batch.closed = True
        if finished:
            batch.finished_at = self.now
            self.out.batches[batch.index] = (self.out.batches[batch.index][0], self.now)

    def _expire(self, batch: _Batch) -> None:
        if batch.closed:
            return
        for w in self.spot_workers + self.dedicated_workers:
            for job in [j for j in w.jobs if j.request.batch is batch]:
                self._waste(job)
                self._end_job(job)
        batch.spot.clear()
        batch.dedicated.clear()
        self._close(batch, finished=False)
        self._fill_all()

    # -- spot capacity ---------------------------------------------------------------------

    def _capacity_change(self, zone: _Zone) -> None:
        """At a trace tick where a zone's capacity changes: drop noticed workers, kill
        workers beyond the capacity, start workers up to it (or to the zone's placement
        target), and schedule the next change (and its notice)."""
        trace = zone.spec.trace
        fleet = self.c.spot_workers if self.policy.uses_spot else 0
        zone.capacity = trace.workers(zone.cap_index, fleet)
        here = [w for w in self.spot_workers if w.zone is zone]
        for w in here:
            if w.leaving and w.kill_at <= self.now:
                self._kill(w)
        here = [w for w in self.spot_workers if w.zone is zone]
        live = [w for w in here if not w.leaving]
        if len(here) > zone.capacity:  # no notice left to give (e.g. notice > tick)
            draining = [w for w in here if w.leaving]
            for w in (draining + self._victims(live))[: len(here) - zone.capacity]:
                zone.preempted += w.serving
                self._kill(w)
            live = [w for w in self.spot_workers if w.zone is zone and not w.leaving]
        self._start_spot(zone, len(live))
        nxt = zone.cap_index + 1
        while trace.workers(nxt, fleet) == zone.capacity:
            nxt += 1
            if nxt > zone.cap_index + len(trace.counts):
                return  # constant from here on
        zone.cap_index = nxt
        when = nxt * trace.gap_seconds
        self._at(when, _CAPACITY, zone)
        if trace.workers(nxt, fleet) < zone.capacity:
            self._at(max(self.now, when - zone.notice), _NOTICE, (zone, when))

    def _start_spot(self, zone: _Zone, live: int) -> None:
        """Start spot workers in ``zone`` up to its capacity (and target); ``live``: how
        many run there now, not draining."""
        allowed = zone.capacity if zone.target is None else min(zone.capacity, zone.target)
        for _ in range(allowed - live):
            w = _Worker(True, self.now, self.now + zone.spec.boot_s, zone)
            self.spot_workers.append(w)
            name = zone.spec.name
            self.out.spot_starts[name] = self.out.spot_starts.get(name, 0) + 1
            self._at(w.ready_at, _READY, w)

    @staticmethod
    def _victims(live: list[_Worker]) -> list[_Worker]:
        """Which spot workers go first: starting ones, then the newest."""
        return sorted(live, key=lambda w: (w.serving, -w.started))

    def _notice(self, zone: _Zone, kill_at: float) -> None:
        here = [w for w in self.spot_workers if w.zone is zone]
        live = [w for w in here if not w.leaving]
        draining = [w for w in here if w.leaving and w.kill_at == math.inf]
        fleet = self.c.spot_workers if self.policy.uses_spot else 0
        excess = len(live) + len(draining) - zone.spec.trace.workers(zone.cap_index, fleet)
        for w in (draining + self._victims(live))[: max(0, excess)]:
            if not w.serving:
                self._kill(w)
                continue
            zone.preempted += 1
            w.leaving, w.kill_at = True, kill_at
            for job in [j for j in w.jobs if j.end > kill_at]:
                self._interrupt(job)
        self._fill_all()

    def _interrupt(self, job: _Job) -> None:
        self._waste(job)
        self._end_job(job)
        job.request.interruptions += 1
        self.out.interruptions += 1
        self._requeue(job.request)

    def _kill(self, worker: _Worker) -> None:
        for job in list(worker.jobs):
            self._interrupt(job)
        worker.leaving = True
        self.spot_workers.remove(worker)

    # -- the scheduler tick ----------------------------------------------------------------

    def _tick(self) -> None:
        self.availability = smoothed_availability(
            self.availability,
            any(z.capacity > 0 for z in self.zones),
            self.c.tick_s,
            self.c.availability_halflife_s,
        )
        if self.placed:
            decision = self._place()
        else:
            decision = self.policy.decide(self.now, self._snapshot(), self._cluster())
        by_id = {b.id: b for b in self.open}
        for batch_id, n in decision.moves.items():
            batch = by_id.get(batch_id)
            if batch is None or n <= 0:
                continue
            n = min(n, len(batch.spot))
            batch.dedicated.extend(batch.spot.popleft() for _ in range(n))
            self.out.moved_requests += n
        for batch_id, n in decision.returns.items():
            batch = by_id.get(batch_id)
            if batch is None or n <= 0:
                continue
            n = min(n, len(batch.dedicated))
            # back in line order, ahead of the batch's spot queue (they were claimable first)
            batch.spot.extendleft(reversed([batch.dedicated.popleft() for _ in range(n)]))
            self.out.returned_requests += n
        self._scale_dedicated(decision)
        self._fill_all()

    def _place(self) -> Decision:
        """Multi-zone: measure each zone, run the policy across them, apply the spot
        placement (start workers now; drain the ones moved away only while the fleet's
        serving workers exceed the plan, so a move never leaves a gap)."""
        locations = []
        for zone in self.zones:
            here = [w for w in self.spot_workers if w.zone is zone and not w.leaving]
            up_here = sum(1 for w in here if w.serving)
            zone.memory.observe(self.now, zone.capacity > 0, up_here, zone.preempted)
            zone.preempted = 0
            locations.append(
                LocationState(
                    name=zone.spec.name,
                    spot_price_ratio=zone.spec.spot_price_ratio,
                    boot_s=zone.spec.boot_s,
                    capacity=zone.capacity,
                    spot_workers=len(here),
                    spot_workers_up=up_here,
                    availability=zone.memory.availability,
                    mean_lifetime_s=zone.memory.mean_lifetime_s,
                )
            )
        plan = plan_locations(
            self.policy,
            self.now,
            self._snapshot(),
            self._cluster(),
            locations,
            self.c.spot_workers,
        )
        for zone in self.zones:
            zone.target = plan.spot_workers.get(zone.spec.name, 0)
            here = [w for w in self.spot_workers if w.zone is zone and not w.leaving]
            for w in self._victims(here)[: max(0, len(here) - zone.target)]:
                if not w.serving:  # a booting worker the plan no longer wants
                    self._kill(w)
            count = sum(1 for w in self.spot_workers if w.zone is zone and not w.leaving)
            self._start_spot(zone, count)
        serving = [w for w in self.spot_workers if w.serving and not w.leaving]
        surplus = len(serving) - sum(z.target or 0 for z in self.zones)
        for zone in reversed(self._by_price()):
            live = [w for w in self.spot_workers if w.zone is zone and not w.leaving]
            over = len(live) - (zone.target or 0)
            up = [w for w in live if w.serving]
            for w in self._victims(up)[: max(0, min(over, surplus))]:
                surplus -= 1
                w.leaving, w.kill_at = True, math.inf
                if not w.jobs:
                    self.spot_workers.remove(w)
        return plan.decision

    def _by_price(self) -> list[_Zone]:
        return sorted(self.zones, key=lambda z: (z.spec.spot_price_ratio, z.spec.name))

    def _snapshot(self) -> list[BatchState]:
        """What the scheduler can count and measure, per open batch. Service times are
        measured over all finished requests, not per batch: a batch's first finished
        requests are its short ones, so a per-batch mean starts biased low."""
        # Before enough requests finished, the operator's configured values.
        mean = self.obs_sum / self.obs_n if self.obs_n >= 30 else self.prior_mean
        tail = max(self.obs_max, self.prior_tail) if self.obs_n < 30 else self.obs_max
        return [
            BatchState(
                batch_id=b.id,
                created_at=b.created,
                deadline_at=b.deadline,
                total=b.total,
                queued_spot=len(b.spot),
                queued_dedicated=len(b.dedicated),
                running_spot=b.running_spot,
                running_dedicated=b.running_dedicated,
                mean_service_seconds=mean,
                tail_service_seconds=tail,
                priority=b.priority,
            )
            for b in self.open
            if not b.closed
        ]

    def _cluster(self) -> ClusterState:
        booting = [w for w in self.dedicated_workers if not w.serving and not w.leaving]
        return ClusterState(
            slots_per_worker=self.slots,
            max_dedicated_workers=self.c.max_dedicated_workers,
            dedicated_cold_start_s=self.c.dedicated_cold_start_s,
            tick_s=self.c.tick_s,
            interruption_notice_s=self.notice,
            spot_workers_up=sum(1 for w in self.spot_workers if w.serving and not w.leaving),
            spot_availability=self.availability,
            dedicated_workers_up=sum(
                1 for w in self.dedicated_workers if w.serving and not w.leaving
            ),
            dedicated_boot_remaining_s=tuple(w.ready_at - self.now for w in booting),
            spot_price_ratio=self.spot_price_ratio,
        )

    def _scale_dedicated(self, decision: Decision) -> None:
        """The autoscaler: start workers at once; scale down only to the policy's hold
        target (``autoscale_target``), stopping starting and idle workers first and
        draining busy ones."""
        desired, self.recent_targets = autoscale_target(self.now, decision, self.recent_targets)
        desired = max(0, min(desired, self.c.max_dedicated_workers))
        active = [w for w in self.dedicated_workers if not w.leaving]
        for _ in range(desired - len(active)):
            w = _Worker(False, self.now, self.now + self.c.dedicated_cold_start_s)
            self.dedicated_workers.append(w)
            self.out.dedicated_starts += 1
            self._at(w.ready_at, _READY, w)
        surplus = len(active) - desired
        if surplus > 0:
            order = sorted(active, key=lambda w: (w.serving, len(w.jobs), -w.ready_at))
            for w in order[:surplus]:
                if w.jobs:
                    w.leaving = True
                else:
                    self._stop(w)

    def _stop(self, worker: _Worker) -> None:
        worker.leaving = True
        if worker in self.dedicated_workers:
            self.dedicated_workers.remove(worker)
            self.out.dedicated_billed += self.now - worker.started


def simulate(
    policy: Policy,
    trace: SpotTrace,
    cluster: ClusterSpec,
    batches: Sequence[SimBatch],
    service_prior: tuple[float, float],
    spot_price_ratio: float = 0.3,
) -> SimOutcome:
    """Run ``policy`` on ``trace`` for ``batches``; see ``Simulation``."""
    return Simulation(policy, trace, cluster, batches, service_prior, spot_price_ratio).run()


def simulate_zones(
    policy: Policy,
    zones: Sequence[Zone],
    cluster: ClusterSpec,
    batches: Sequence[SimBatch],
    service_prior: tuple[float, float],
) -> SimOutcome:
    """Run ``policy`` across ``zones`` (at least one), the spot fleet placed by
    ``plan_locations`` each tick; see ``Simulation``."""
    if not zones:
        raise ValueError("simulate_zones needs at least one zone")
    first = zones[0]
    return Simulation(
        policy, first.trace, cluster, batches, service_prior, first.spot_price_ratio, zones
    ).run()
