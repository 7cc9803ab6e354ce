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
        self.total = len(spec.service)
        self.spot = deque(
            _Request(self, s, f) for s, f in zip(spec.service, spec.failures, strict=True)
        )
        self.dedicated: deque[_Request] = deque()
        self.running_spot = self.running_dedicated = self.done = 0
        self.closed = False
        self.finished_at: float | None = None


class _Worker:
    __slots__ = ("jobs", "kill_at", "leaving", "ready_at", "serving", "spot", "started")

    def __init__(self, spot: bool, started: float, ready_at: float) -> None:
        self.spot = spot
        self.started = started
        self.ready_at = ready_at
        self.serving = False
        self.leaving = False
        self.kill_at = 0.0
        self.jobs: dict[_Job, None] = {}  # insertion-ordered set


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
    dedicated_starts: int = 0
    end: float = 0.0


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
    ) -> None:
        """``service_prior``: (mean, longest) seconds a request holds a slot, what the
        scheduler assumes before it has measured enough finished requests (configured)."""
        self.policy = policy
        self.trace = trace
        self.c = cluster
        self.slots = cluster.slots_per_worker
        self.notice = trace.notice_seconds if cluster.notice_s is None else cluster.notice_s
        self.specs = sorted(batches, key=lambda b: b.arrival)
        self.out = SimOutcome()
        self.now = 0.0
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = itertools.count()
        self.open: list[_Batch] = []  # in the queue's claim order
        self.spot_workers: list[_Worker] = []
        self.dedicated_workers: list[_Worker] = []
        self.capacity = 0
        self.cap_index = 0
        self.availability = 1.0
        self.obs_n = 0
        self.obs_sum = self.obs_max = 0.0
        self.prior_mean, self.prior_tail = service_prior
        self.spot_price_ratio = spot_price_ratio
        self.recent_targets: tuple[tuple[float, int], ...] = ()  # autoscale_target's state

    # -- event plumbing --------------------------------------------------------------------

    def _at(self, t: float, kind: int, payload: object = None) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, payload))

    def run(self) -> SimOutcome:
        self._capacity_change()
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
                assert isinstance(payload, float)
                self._notice(payload)
            elif kind == _CAPACITY:
                self._capacity_change()
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
        # the queue's claim order: earliest deadline first (ties: the oldest batch)
        bisect.insort(self.open, batch, key=lambda b: (b.deadline, b.created))
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

    def _capacity_change(self) -> None:
        """At a trace tick where the capacity changes: drop noticed workers, start or kill
        workers to match, and schedule the next change (and its notice)."""
        trace = self.trace
        fleet = self.c.spot_workers if self.policy.uses_spot else 0
        self.capacity = trace.workers(self.cap_index, fleet)
        for w in [w for w in self.spot_workers if w.leaving]:
            self._kill(w)
        live = [w for w in self.spot_workers if not w.leaving]
        if len(live) > self.capacity:  # no notice left to give (e.g. notice > tick)
            for w in self._victims(live)[: len(live) - self.capacity]:
                self._kill(w)
        for _ in range(self.capacity - len(live)):
            w = _Worker(True, self.now, self.now + self.c.spot_cold_start_s)
            self.spot_workers.append(w)
            self._at(w.ready_at, _READY, w)
        nxt = self.cap_index + 1
        while trace.workers(nxt, fleet) == self.capacity:
            nxt += 1
            if nxt > self.cap_index + len(trace.counts):
                return  # constant from here on
        self.cap_index = nxt
        when = nxt * trace.gap_seconds
        self._at(when, _CAPACITY)
        if trace.workers(nxt, fleet) < self.capacity:
            self._at(max(self.now, when - self.notice), _NOTICE, when)

    @staticmethod
    def _victims(live: list[_Worker]) -> list[_Worker]:
        """Which spot workers go first: starting ones, then the newest."""
        return sorted(live, key=lambda w: (w.serving, -w.started))

    def _notice(self, kill_at: float) -> None:
        live = [w for w in self.spot_workers if not w.leaving]
        fleet = self.c.spot_workers if self.policy.uses_spot else 0
        excess = len(live) - self.trace.workers(self.cap_index, fleet)
        for w in self._victims(live)[: max(0, excess)]:
            if not w.serving:
                self._kill(w)
                continue
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
            self.availability, self.capacity > 0, self.c.tick_s, self.c.availability_halflife_s
        )
        decision = self.policy.decide(self.now, self._snapshot(), self._cluster())
        by_id = {b.id: b for b in self.open}
        for batch_id, n in decision.moves.items():
            batch = by_id.get(batch_id)
            if batch is None or n <= 0:
                continue
            n = min(n, len(batch.spot))
            batch.dedicated.extend(batch.spot.popleft() for _ in range(n))
            self.out.moved_requests += n
        self._scale_dedicated(decision)
        self._fill_all()

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
