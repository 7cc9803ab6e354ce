"""SLA escalation: which queued spot requests move to the dedicated pool, and how many
dedicated workers are needed (pure: no I/O, no clock; ``now`` is an argument).

The same code runs inside the scheduler (one call per tick, from database snapshots) and
inside the simulator (``inferbatch.simulate``). Units everywhere: seconds for times and
durations (``now`` and ``deadline_at`` on one clock, e.g. Unix seconds), *worker-seconds*
for work: a request that holds one of a worker's ``slots_per_worker`` slots for ``s``
seconds costs ``s / slots_per_worker`` worker-seconds (GPU-seconds when a worker is a GPU).

Policies (after "Can't Be Late", Wu et al., NSDI 2024, generalised from one job on one
instance to many batches of small requests on fleets, earliest deadline first):

- ``greedy``: spot while safe; once waiting one more tick would leave the deadline
  unreachable on the whole dedicated quota, move everything left of the batch to dedicated.
- ``uniform-progress``: keep each batch on its straight line from creation to deadline;
  the part behind the line goes to dedicated. Plus greedy's safety net.
- ``deadline-aware`` (the default): keep the invariant "if every spot worker vanished now,
  dedicated workers could still finish every batch in time" with the fewest dedicated
  workers warm: a worker started now is ready after the cold start, one started at the
  next tick after cold start plus a tick; only the difference has to be running already.
  During an outage it holds released workers until the deadlines would call them back
  when that is cheaper than a restart (``Decision.hold_s``, applied by
  ``autoscale_target``).
- ``all-dedicated`` and ``spot-only``: the references.

Per request, independently of the batch policy: ``escalate_request`` moves a request to
dedicated after N spot interruptions and on retry after a failure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class EscalationConfig:
    """Per-request escalation. ``None`` disables a rule."""

    max_spot_interruptions: int | None = 2
    """Escalate a request once it has been interrupted on spot this many times."""
    max_failed_attempts: int | None = 1
    """Escalate a retry once the request has failed this many times (any pool)."""


def escalate_request(
    interruptions: int, failed_attempts: int, config: EscalationConfig | None
) -> str | None:
    """The reason to move one re-queued request to dedicated, or None to keep it on spot.

    Called when a request goes back to the queue (spot interruption, lease loss or a
    retryable failure) with its counts *after* this attempt.
    """
    if config is None:
        return None
    limit = config.max_spot_interruptions
    if limit is not None and interruptions >= limit:
        return f"interrupted on spot {interruptions} times (limit {limit})"
    limit = config.max_failed_attempts
    if limit is not None and failed_attempts >= limit:
        return f"retry after {failed_attempts} failed attempts (limit {limit})"
    return None


def escalation_kind(reason: str) -> str:
    """The bounded kind of an escalation reason: interruptions, retry or deadline."""
    if reason.startswith("interrupted"):
        return "interruptions"
    if reason.startswith("retry"):
        return "retry"
    return "deadline"


@dataclass(frozen=True, slots=True)
class BatchState:
    """One unfinished batch, as counted from the ``requests`` table at ``now``."""

    batch_id: str
    created_at: float
    deadline_at: float
    total: int
    """Requests that need a worker (excludes deduplicated and cancelled ones)."""
    queued_spot: int
    queued_dedicated: int
    running_spot: int
    running_dedicated: int
    mean_service_seconds: float
    """Measured mean seconds a request holds a worker slot (finished requests)."""
    tail_service_seconds: float = 0.0
    """The longest a request may hold a slot (measured maximum, or the engine timeout):
    after the last dispatch, a batch can take this long to finish."""
    priority: int = 1
    """The queue serves higher priorities first, whatever their deadlines."""

    @property
    def remaining(self) -> int:
        return self.queued_spot + self.queued_dedicated + self.running_spot + self.running_dedicated

    @property
    def guard(self) -> float:
        """Seconds to keep free before the deadline after the fluid estimate of the work:
        list scheduling finishes within work / workers + the longest request (Graham), and
        the longest request may have to run twice (one failure or interruption)."""
        return 2 * max(self.tail_service_seconds, self.mean_service_seconds)

    def work(self, slots_per_worker: int) -> float:
        """Worker-seconds left, counting running requests as not started (they are lost
        if their spot worker vanishes)."""
        return self.remaining * self.mean_service_seconds / slots_per_worker


@dataclass(frozen=True, slots=True)
class ClusterState:
    """The fleet at ``now``: live worker counts and measured spot behaviour."""

    slots_per_worker: int
    """Requests one worker runs at once (the engine's max in flight)."""
    max_dedicated_workers: int
    """Quota: the most dedicated workers the autoscaler can run."""
    dedicated_cold_start_s: float
    """Seconds from asking for a dedicated worker to it serving."""
    tick_s: float
    """Seconds between two ``decide`` calls: how late a reaction can be."""
    interruption_notice_s: float = 30.0
    spot_workers_up: int = 0
    """Spot workers serving now (not draining)."""
    spot_availability: float = 1.0
    """Measured share of recent time with any spot capacity (information only)."""
    dedicated_workers_up: int = 0
    """Dedicated workers serving now (not draining)."""
    dedicated_boot_remaining_s: tuple[float, ...] = ()
    """One entry per dedicated worker still starting: seconds until it serves."""
    spot_price_ratio: float = 0.3
    """Spot price / dedicated price per worker-second."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do this tick: move ``moves[batch_id]`` queued spot requests of each batch to
    the dedicated pool, and run ``dedicated_workers_desired`` dedicated workers (serving or
    starting), not scaling below any count desired in the last ``hold_s`` seconds.
    ``reasons`` says why, per batch, for logs and the portal."""

    moves: Mapping[str, int] = field(default_factory=dict)
    dedicated_workers_desired: int = 0
    reasons: Mapping[str, str] = field(default_factory=dict)
    hold_s: float = 0.0
    """Keep dedicated workers this long after they stop being desired (see
    ``autoscale_target``): a restart would cost a cold start."""
    at_risk: tuple[str, ...] = ()
    """Batches expected to miss their deadline even with every dedicated worker allowed."""
    returns: Mapping[str, int] = field(default_factory=dict)
    """Queued dedicated requests of each batch to send back to the spot pool: no dedicated
    worker runs, starts or is wanted to serve them (see ``stranded``)."""


class Policy(Protocol):
    """A scheduling policy; implementations hold configuration only, never state."""

    @property
    def name(self) -> str: ...

    @property
    def escalation(self) -> EscalationConfig | None: ...

    @property
    def uses_spot(self) -> bool:
        """False: run no spot workers at all (the scheduler scales them to zero)."""
        ...

    def decide(
        self, now: float, batches: Sequence[BatchState], cluster: ClusterState
    ) -> Decision: ...


# -- shared arithmetic ---------------------------------------------------------------------


def edf(batches: Sequence[BatchState]) -> list[BatchState]:
    """Unfinished batches in the queue's claim order: highest priority first, then earliest
    deadline first (ties: oldest, then id). With one priority this is EDF; a batch's work
    must finish by its deadline behind everything ahead of it in this order."""
    live = [b for b in batches if b.remaining > 0]
    return sorted(live, key=lambda b: (-b.priority, b.deadline_at, b.created_at, b.batch_id))


def _ready_times(cluster: ClusterState, quota: int | None = None) -> list[float]:
    """Seconds until each of ``quota`` dedicated workers (default: the whole quota) can
    serve if started now: serving ones first, then starting ones, then new ones (never
    more than the quota, which may have shrunk below what runs)."""
    quota = cluster.max_dedicated_workers if quota is None else quota
    ready = [0.0] * cluster.dedicated_workers_up
    ready += sorted(max(0.0, r) for r in cluster.dedicated_boot_remaining_s)
    ready += [cluster.dedicated_cold_start_s] * max(0, quota - len(ready))
    return ready[:quota]


def planning_quota(cluster: ClusterState) -> int:
    """The quota less one spare worker (N+1), when there are two or more: plans must
    survive a dedicated worker failing or a batch with an earlier deadline arriving while
    the quota runs flat out. The spare is used only when a deadline is at risk."""
    quota = cluster.max_dedicated_workers
    return quota - 1 if quota >= 2 else quota


def usable_workers(requests: int, cluster: ClusterState, ready: Sequence[float]) -> int:
    """How many workers ``requests`` requests can keep busy, within the quota."""
    wanted = -(-requests // cluster.slots_per_worker)  # ceil
    return len(ready) if wanted >= len(ready) else (wanted if wanted > 1 else 1)


def warm_workers_needed(
    work: float, requests: int, horizon: float, cluster: ClusterState, ready: Sequence[float]
) -> int | None:
    """Fewest dedicated workers to keep started *now* so that ``work`` worker-seconds of
    ``requests`` requests finish within ``horizon`` seconds on dedicated alone, when the
    rest of the quota is only started at the next tick. None when even starting the whole
    quota now is not enough.

    ``ready`` comes from ``_ready_times`` (fastest first). A worker started now gives
    ``horizon - ready`` worker-seconds; one started a tick later gives
    ``horizon - tick - cold start``. No more workers than ``requests`` can fill are counted.
    """
    usable = usable_workers(requests, cluster, ready)
    deferred = horizon - cluster.tick_s - cluster.dedicated_cold_start_s
    if deferred < 0.0:
        deferred = 0.0
    elif usable * deferred >= work:
        return 0  # the common case, far from any deadline
    started = 0.0
    for n in range(usable + 1):
        if started + (usable - n) * deferred >= work:
            return n
        if n < usable and horizon > ready[n]:
            started += horizon - ready[n]
    return None


def beyond_plan(
    work: float,
    requests: int,
    horizon: float,
    cluster: ClusterState,
    plan: Sequence[float],
    everything: Sequence[float],
) -> int | None:
    """Workers to run when the plan (``plan``: the quota less the spare) cannot finish a
    prefix in time: all of the plan, and the spare too once the whole quota needs it now.
    None when even the whole quota started now is too late."""
    full = warm_workers_needed(work, requests, horizon, cluster, everything)
    if full is None:
        return None
    planned = usable_workers(requests, cluster, plan)
    return full if full > planned else planned


def fill_dedicated_queue(
    ordered: Sequence[BatchState], desired: int, cluster: ClusterState, reason: str
) -> tuple[dict[str, int], dict[str, str]]:
    """Moves that give ``desired`` dedicated workers a queue for one tick: their slots plus
    what they finish in a tick, taken from ``ordered`` (claim order, most urgent first).
    Only dedicated work of batches ahead counts as already queued: requests escalated one
    by one in a later batch are claimed after the urgent ones and must not hold them back."""
    moves: dict[str, int] = {}
    reasons: dict[str, str] = {}
    queued = 0
    for b in ordered:
        per_slot = 1.0 + cluster.tick_s / max(1.0, b.mean_service_seconds)
        target = math.ceil(desired * cluster.slots_per_worker * per_slot)
        queued += b.queued_dedicated
        if target - queued <= 0:
            break
        n = min(b.queued_spot, target - queued)
        if n > 0:
            moves[b.batch_id] = n
            reasons[b.batch_id] = reason
            queued += n
    return moves, reasons


def stranded(ordered: Sequence[BatchState], desired: int, cluster: ClusterState) -> dict[str, int]:
    """Queued dedicated requests no dedicated worker will serve soon: none serves or starts
    and ``desired`` is none, while spot workers serve. Left where they are they would wait
    for the next worker a deadline starts (a cold start for a few requests, the batch done
    only then); on spot they run now. The invariant counts every queued request whatever
    its pool, so sending them back changes no deadline: if they are needed on dedicated
    again, the next decision moves them."""
    if desired > 0 or cluster.spot_workers_up == 0:
        return {}
    if cluster.dedicated_workers_up > 0 or cluster.dedicated_boot_remaining_s:
        return {}
    return {b.batch_id: b.queued_dedicated for b in ordered if b.queued_dedicated > 0}


def safety_net(
    now: float, ordered: Sequence[BatchState], cluster: ClusterState
) -> list[BatchState]:
    """Batches (EDF prefix) that could not wait one more tick: if spot vanished now, starting
    the whole dedicated quota at the next tick would finish their work too late."""
    ready = _ready_times(cluster)
    work, requests, last = 0.0, 0, -1
    for i, b in enumerate(ordered):
        work += b.work(cluster.slots_per_worker)
        requests += b.remaining
        horizon = b.deadline_at - now - b.guard
        if warm_workers_needed(work, requests, horizon, cluster, ready) != 0:
            last = i
    return list(ordered[: last + 1])


# -- policies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpotOnlyPolicy:
    """Never uses dedicated capacity, not even per request: the cost floor, not safe."""

    name: str = field(default="spot-only", init=False)
    escalation: EscalationConfig | None = None
    uses_spot: bool = field(default=True, init=False)

    def decide(self, now: float, batches: Sequence[BatchState], cluster: ClusterState) -> Decision:
        return Decision()


@dataclass(frozen=True, slots=True)
class AllDedicatedPolicy:
    """Everything on dedicated (no spot workers at all), as many workers as the work can
    fill: the cost reference."""

    name: str = field(default="all-dedicated", init=False)
    escalation: EscalationConfig | None = None
    uses_spot: bool = field(default=False, init=False)

    def decide(self, now: float, batches: Sequence[BatchState], cluster: ClusterState) -> Decision:
        backlog = sum(b.remaining for b in batches)
        desired = min(cluster.max_dedicated_workers, math.ceil(backlog / cluster.slots_per_worker))
        # A tick's worth at a time, earliest deadline first: the queue itself is FIFO.
        moves, reasons = fill_dedicated_queue(edf(batches), desired, cluster, "all-dedicated")
        return Decision(moves, desired, reasons)


@dataclass(frozen=True, slots=True)
class GreedyPolicy:
    """Can't Be Late's Greedy: spot until the safety net, then dedicated for the rest.

    A batch whose EDF prefix could not wait one more tick moves all its queued requests to
    dedicated. That condition stays true once met (dedicated keeps pace with the shrinking
    horizon and nothing runs on spot), so the switch sticks without stored state.
    """

    name: str = field(default="greedy", init=False)
    escalation: EscalationConfig | None = field(default_factory=EscalationConfig)
    uses_spot: bool = field(default=True, init=False)

    def decide(self, now: float, batches: Sequence[BatchState], cluster: ClusterState) -> Decision:
        urgent = safety_net(now, edf(batches), cluster)
        moves = {b.batch_id: b.queued_spot for b in urgent if b.queued_spot > 0}
        reasons = dict.fromkeys(
            (b.batch_id for b in urgent), "safety net: cannot wait a tick for spot"
        )
        return Decision(moves, _backlog_workers(batches, moves, cluster), reasons)


@dataclass(frozen=True, slots=True)
class UniformProgressPolicy:
    """Can't Be Late's Uniform Progress, per batch, with Greedy's safety net.

    Each batch should have finished ``total * elapsed / window`` requests, where the window
    ends a cold start, a tick and a tail request before the deadline. Requests behind that
    line and not already running go to dedicated, which runs them at once.
    """

    name: str = field(default="uniform-progress", init=False)
    escalation: EscalationConfig | None = field(default_factory=EscalationConfig)
    uses_spot: bool = field(default=True, init=False)

    def decide(self, now: float, batches: Sequence[BatchState], cluster: ClusterState) -> Decision:
        ordered = edf(batches)
        moves: dict[str, int] = {}
        reasons: dict[str, str] = {}
        margin = cluster.dedicated_cold_start_s + cluster.tick_s
        for b in ordered:
            end = b.deadline_at - b.guard - margin
            due = 1.0 if end <= b.created_at else (now - b.created_at) / (end - b.created_at)
            allowed = b.total * (1.0 - min(1.0, max(0.0, due)))
            covered = b.running_spot + b.running_dedicated + b.queued_dedicated
            n = min(b.queued_spot, math.ceil(b.remaining - allowed) - covered)
            if n > 0:
                moves[b.batch_id] = n
                reasons[b.batch_id] = "behind uniform progress"
        for b in safety_net(now, ordered, cluster):
            if b.queued_spot > 0:
                moves[b.batch_id] = b.queued_spot
            reasons[b.batch_id] = "safety net: cannot wait a tick for spot"
        return Decision(moves, _backlog_workers(batches, moves, cluster), reasons)


@dataclass(frozen=True, slots=True)
class DeadlineAwarePolicy:
    """Warm standby: the fewest dedicated workers that keep every deadline safe without spot.

    For each EDF prefix of batches (cumulative remaining work ``W`` in worker-seconds, horizon
    ``H`` = its deadline minus now minus ``BatchState.guard``), count the dedicated workers that
    must be started now so that, if spot vanished this instant, those plus the rest of the
    quota started a tick later still deliver ``W`` within ``H``; run the largest such count.
    Nothing else goes to dedicated: while spot keeps up, ``W`` shrinks as fast as the
    horizon and no worker is needed; during an outage the count rises just in time. The
    workers get the queued requests of the batches that need them, earliest deadline first.

    Hysteresis without stored state: a started worker is kept while the invariant, checked
    one restart (a tick plus the cold start) later with no progress in between, would still
    ask for it; so noise in the measured work cannot make the fleet flap, and a worker is
    never stopped when it might have to be started again before it could serve.

    Safety margins come from the cluster, not from fitted constants: the cold start (how
    long new capacity takes), the tick (how late the reaction is), the longest request
    (measured, run twice), and the quota less one spare worker (``planning_quota``). Spot
    in-flight work counts as lost.
    """

    name: str = field(default="deadline-aware", init=False)
    escalation: EscalationConfig | None = field(default_factory=EscalationConfig)
    uses_spot: bool = field(default=True, init=False)

    def decide(self, now: float, batches: Sequence[BatchState], cluster: ClusterState) -> Decision:
        ordered = edf(batches)
        ready = _ready_times(cluster, planning_quota(cluster))
        everything = _ready_times(cluster)
        started = min(
            len(everything), cluster.dedicated_workers_up + len(cluster.dedicated_boot_remaining_s)
        )
        restart = cluster.tick_s + cluster.dedicated_cold_start_s
        prefixes: list[tuple[float, int, float]] = []  # (work, requests, horizon)
        need, critical = 0, 0
        at_risk: list[str] = []
        # a prefix in claim order holds all the work dedicated workers would serve first
        work, requests = 0.0, 0
        for b in ordered:
            work += b.work(cluster.slots_per_worker)
            requests += b.remaining
            prefix = (work, requests, b.deadline_at - now - b.guard)
            prefixes.append(prefix)
            n = warm_workers_needed(*prefix, cluster, ready)
            if n is None:
                n = beyond_plan(*prefix, cluster, ready, everything)
            if n is None:
                n = usable_workers(prefix[1], cluster, everything)
                at_risk.append(b.batch_id)
            if n > 0:
                critical = len(prefixes)
                need = n if n > need else need
        # Keep what is started (never more) while the invariant one restart later, with no
        # progress assumed meanwhile, would still ask for it.
        keep = 0
        if started > need:
            for w, r, h in prefixes:
                n = warm_workers_needed(w, r, h - restart, cluster, ready)
                if n is None:
                    n = beyond_plan(w, r, h - restart, cluster, ready, everything)
                n = usable_workers(r, cluster, everything) if n is None else n
                keep = n if n > keep else keep
        desired = max(need, min(started, keep))
        # Requests escalated one by one (``escalate_request``) are served by the dedicated
        # workers that run; with none running or wanted they go back to spot (``stranded``)
        # rather than wait for a cold start the deadlines would make for them.
        reason = f"{desired} warm dedicated workers keep deadlines safe without spot"
        # Only batches whose deadlines need the workers get moved: the rest stay on spot.
        # Kept workers with nothing moved take spot-pool work (dedicated_takes_spot).
        moves, reasons = fill_dedicated_queue(ordered[:critical], desired, cluster, reason)
        for batch_id in at_risk:
            reasons[batch_id] = "at risk: the whole dedicated quota is too late"
        return Decision(
            moves,
            desired,
            reasons,
            hold_for(prefixes, now, cluster, ready),
            tuple(at_risk),
            stranded(ordered, desired, cluster),
        )


def hold_for(
    prefixes: Sequence[tuple[float, int, float]],
    now: float,
    cluster: ClusterState,
    ready: Sequence[float],
) -> float:
    """Ski rental for dedicated workers the deadlines stop needing during a spot outage.

    If the outage goes on, the deadlines call workers back when the invariant next binds:
    ``call_back`` seconds from now (no progress assumed). Keeping a worker until then
    saves a restart (a cold start at the dedicated price); what it costs is the price
    difference on the work it runs meanwhile, lost only if spot returns to do that work,
    with the measured availability as that chance. So hold until the call-back when it
    comes before the break-even time ``cold start / ((1 - p) * availability)``, else
    release at once. While spot serves there is no call-back to expect: no hold.
    ``prefixes`` are the policy's ``(work, requests, horizon)`` per EDF prefix."""
    if not prefixes or cluster.spot_workers_up > 0:
        return 0.0
    restart = cluster.tick_s + cluster.dedicated_cold_start_s
    call_back = math.inf
    for work, requests, horizon in prefixes:
        usable = usable_workers(requests, cluster, ready)
        call_back = min(call_back, horizon - restart - work / usable)
    call_back = max(0.0, call_back)
    regret = (1.0 - cluster.spot_price_ratio) * cluster.spot_availability
    if regret > 0.0 and call_back > cluster.dedicated_cold_start_s / regret:
        return 0.0
    return call_back + restart


AVAILABILITY_HALFLIFE_S = 6 * 3600.0
"""How fast the measured spot availability forgets: half its weight after six hours."""


def smoothed_availability(
    previous: float, spot_up: bool, elapsed_s: float, halflife_s: float = AVAILABILITY_HALFLIFE_S
) -> float:
    """Exponentially weighted share of time with spot capacity, updated after
    ``elapsed_s`` seconds in which spot was (``spot_up``) or was not available."""
    decay: float = 0.5 ** (max(0.0, elapsed_s) / halflife_s)
    return decay * previous + (1 - decay) * (1.0 if spot_up else 0.0)


@dataclass
class FleetMemory:
    """What the policy needs to know about the fleet that one database snapshot does not
    show: the measured spot availability, and the dedicated workers asked for that are not
    serving yet (assumed to serve ``cold_start_s`` after they were asked for). The
    scheduler keeps one; the simulator measures the same quantities itself."""

    cold_start_s: float
    availability: float = 1.0
    last_seen: float | None = None
    asked_at: list[float] = field(default_factory=list)
    """When each dedicated worker still starting was asked for, oldest first."""

    def observe(self, now: float, spot_up: int, dedicated_up: int, desired: int) -> None:
        """Record a tick's live worker counts; ``desired`` is the count last asked for."""
        if self.last_seen is not None:
            self.availability = smoothed_availability(
                self.availability, spot_up > 0, now - self.last_seen
            )
        self.last_seen = now
        starting = max(0, desired - dedicated_up)
        del self.asked_at[: max(0, len(self.asked_at) - starting)]  # the oldest now serve

    def ask(self, now: float, desired: int, dedicated_up: int) -> None:
        """The policy now wants ``desired`` dedicated workers."""
        starting = max(0, desired - dedicated_up)
        del self.asked_at[starting:]  # asked for fewer: the newest requests are withdrawn
        self.asked_at.extend([now] * (starting - len(self.asked_at)))

    def boot_remaining(self, now: float) -> tuple[float, ...]:
        return tuple(max(0.0, self.cold_start_s - (now - t)) for t in self.asked_at)


def autoscale_target(
    now: float, decision: Decision, recent: tuple[tuple[float, int], ...]
) -> tuple[int, tuple[tuple[float, int], ...]]:
    """The dedicated worker count to run: the largest count desired within the last
    ``decision.hold_s`` seconds (like an autoscaler's scale-down stabilisation window).
    ``recent`` is the small state from the previous call (start with ``()``); the second
    value is the state for the next call. Scaling up is immediate."""
    desired = decision.dedicated_workers_desired
    kept = tuple((t, n) for t, n in recent if t > now - decision.hold_s and n > desired)
    state = (*kept, (now, desired))
    return max(n for _, n in state), state


def _backlog_workers(
    batches: Sequence[BatchState], moves: Mapping[str, int], cluster: ClusterState
) -> int:
    """Workers that run the dedicated backlog, including this tick's moves, at once."""
    backlog = sum(b.queued_dedicated + b.running_dedicated for b in batches)
    backlog += sum(moves.values())
    return min(cluster.max_dedicated_workers, math.ceil(backlog / cluster.slots_per_worker))


POLICY_NAMES = (
    "default",
    "deadline-aware",
    "greedy",
    "uniform-progress",
    "all-dedicated",
    "spot-only",
)
DEFAULT_POLICY = "deadline-aware"


def policy_by_name(name: str, escalation: EscalationConfig | None = None) -> Policy:
    """The policy called ``name`` (see ``POLICY_NAMES``; ``default`` is ``deadline-aware``).

    ``escalation`` overrides the per-request rule of the policies that use one.
    Raises ``ValueError`` for an unknown name.
    """
    config = escalation if escalation is not None else EscalationConfig()
    match DEFAULT_POLICY if name == "default" else name:
        case "deadline-aware":
            return DeadlineAwarePolicy(escalation=config)
        case "greedy":
            return GreedyPolicy(escalation=config)
        case "uniform-progress":
            return UniformProgressPolicy(escalation=config)
        case "all-dedicated":
            return AllDedicatedPolicy()
        case "spot-only":
            return SpotOnlyPolicy()
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
