"""The SLA escalation policy (inferbatch.policy): pure decisions from snapshots."""

from __future__ import annotations

import random

import pytest

from inferbatch.policy import (
    POLICY_NAMES,
    BatchState,
    ClusterState,
    DeadlineAwarePolicy,
    Decision,
    EscalationConfig,
    GreedyPolicy,
    UniformProgressPolicy,
    autoscale_target,
    escalate_request,
    policy_by_name,
)
from inferbatch.policy.escalation import (
    AVAILABILITY_HALFLIFE_S,
    FleetMemory,
    _ready_times,
    edf,
    planning_quota,
    smoothed_availability,
    warm_workers_needed,
)

pytestmark = pytest.mark.unit

HOUR = 3600.0
CLUSTER = ClusterState(
    slots_per_worker=4,
    max_dedicated_workers=8,
    dedicated_cold_start_s=240.0,
    tick_s=30.0,
    interruption_notice_s=120.0,
    spot_workers_up=8,
)


def batch(
    batch_id: str = "b",
    *,
    requests: int = 1000,
    deadline_in: float = 24 * HOUR,
    created_ago: float = 0.0,
    now: float = 0.0,
    mean: float = 90.0,
    tail: float = 600.0,
    queued_dedicated: int = 0,
    priority: int = 1,
) -> BatchState:
    return BatchState(
        batch_id=batch_id,
        created_at=now - created_ago,
        deadline_at=now + deadline_in,
        total=requests + queued_dedicated,
        queued_spot=requests,
        queued_dedicated=queued_dedicated,
        running_spot=0,
        running_dedicated=0,
        mean_service_seconds=mean,
        tail_service_seconds=tail,
        priority=priority,
    )


def seconds_to_finish_on_dedicated(
    b: BatchState, cluster: ClusterState, workers: int | None = None
) -> float:
    """Cold start + the fluid time on ``workers`` (default: the quota) + the guard."""
    work = b.work(cluster.slots_per_worker)
    workers = workers or cluster.max_dedicated_workers
    return cluster.dedicated_cold_start_s + work / workers + b.guard


# -- per-request escalation ----------------------------------------------------------------


def test_request_escalates_after_the_configured_interruptions() -> None:
    config = EscalationConfig(max_spot_interruptions=2, max_failed_attempts=None)
    assert escalate_request(1, 0, config) is None
    reason = escalate_request(2, 0, config)
    assert reason is not None and "interrupted" in reason


def test_retry_after_failure_escalates_when_configured() -> None:
    assert escalate_request(0, 1, EscalationConfig()) is not None
    assert escalate_request(0, 1, EscalationConfig(max_failed_attempts=2)) is None
    assert escalate_request(0, 5, EscalationConfig(max_failed_attempts=None)) is None


def test_no_config_never_escalates() -> None:
    assert escalate_request(10, 10, None) is None


# -- batch policies ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deadline-aware", "greedy", "uniform-progress"])
def test_batch_with_ample_slack_stays_on_spot(name: str) -> None:
    decision = policy_by_name(name).decide(0.0, [batch(requests=500)], CLUSTER)
    assert dict(decision.moves) == {}
    assert decision.dedicated_workers_desired == 0


@pytest.mark.parametrize("name", ["deadline-aware", "greedy", "uniform-progress"])
def test_batch_that_cannot_wait_for_spot_is_moved(name: str) -> None:
    # 2000 requests = 45,000 worker-seconds: 8 dedicated workers need 5,625 s plus a cold
    # start and the guard; the deadline leaves just that, so waiting a tick is too late.
    urgent = batch(requests=2000, deadline_in=1.0)
    urgent = batch(requests=2000, deadline_in=seconds_to_finish_on_dedicated(urgent, CLUSTER))
    decision = policy_by_name(name).decide(0.0, [urgent], CLUSTER)
    assert decision.moves.get("b", 0) > 0
    assert decision.dedicated_workers_desired == CLUSTER.max_dedicated_workers
    assert "b" in decision.reasons


def test_deadline_aware_starts_workers_just_in_time() -> None:
    """The count of warm workers grows as the deadline nears, from none to the quota."""
    policy = DeadlineAwarePolicy()
    base = batch(requests=2000)
    latest = seconds_to_finish_on_dedicated(base, CLUSTER, planning_quota(CLUSTER))
    counts = [
        policy.decide(0.0, [batch(requests=2000, deadline_in=latest + extra)], CLUSTER)
        for extra in (3 * HOUR, CLUSTER.tick_s + 60, CLUSTER.tick_s / 2, 0.0)
    ]
    desired = [d.dedicated_workers_desired for d in counts]
    assert desired[0] == 0
    assert desired == sorted(desired)
    assert desired[-1] == planning_quota(CLUSTER)  # the spare is kept for emergencies


def test_spare_worker_is_started_only_once_the_deadline_needs_it_now() -> None:
    """Beyond the plan (the quota less the spare) the whole plan runs, and the spare joins
    only when waiting a tick would be too late for the whole quota; past that the batch
    is at risk."""
    policy, quota = DeadlineAwarePolicy(), CLUSTER.max_dedicated_workers
    tight = seconds_to_finish_on_dedicated(batch(requests=2000), CLUSTER) + CLUSTER.tick_s
    now = policy.decide(0.0, [batch(requests=2000, deadline_in=tight)], CLUSTER)
    assert now.dedicated_workers_desired == planning_quota(CLUSTER) == quota - 1
    assert not now.at_risk
    later = batch(requests=2000, deadline_in=tight - CLUSTER.tick_s)
    assert policy.decide(0.0, [later], CLUSTER).dedicated_workers_desired == quota
    late = batch(requests=2000, deadline_in=tight - 3 * CLUSTER.tick_s)
    decision = policy.decide(0.0, [late], CLUSTER)
    assert decision.dedicated_workers_desired == quota
    assert decision.at_risk == ("b",) and "at risk" in decision.reasons["b"]


def test_earliest_deadline_gets_dedicated_first() -> None:
    """EDF across batches: the urgent batch created later is moved, the old relaxed one not."""
    relaxed = batch("relaxed", requests=3000, deadline_in=20 * HOUR, created_ago=4 * HOUR)
    probe = batch("urgent", requests=600)
    urgent = batch(
        "urgent", requests=600, deadline_in=seconds_to_finish_on_dedicated(probe, CLUSTER)
    )
    for policy in (DeadlineAwarePolicy(), GreedyPolicy()):
        decision = policy.decide(0.0, [relaxed, urgent], CLUSTER)
        assert decision.moves.get("urgent", 0) > 0
        assert decision.moves.get("relaxed", 0) == 0
    assert [b.batch_id for b in edf([relaxed, urgent])] == ["urgent", "relaxed"]


def test_a_higher_priority_counts_ahead_of_an_earlier_deadline() -> None:
    """The queue serves priority first: an urgent normal batch behind a big high-priority
    one must plan for that work too, so it needs dedicated workers sooner."""
    probe = batch("urgent", requests=600)
    deadline = seconds_to_finish_on_dedicated(probe, CLUSTER) + 2 * HOUR
    urgent = batch("urgent", requests=600, deadline_in=deadline)
    important = batch("important", requests=6000, deadline_in=20 * HOUR, priority=10)
    assert [b.batch_id for b in edf([urgent, important])] == ["important", "urgent"]
    policy = DeadlineAwarePolicy()
    assert policy.decide(0.0, [urgent], CLUSTER).dedicated_workers_desired == 0
    assert policy.decide(0.0, [urgent, important], CLUSTER).dedicated_workers_desired > 0


def test_started_workers_are_kept_through_noise() -> None:
    """A small drop in measured work does not stop warm workers that would be needed again
    before they could restart (hysteresis without state)."""
    policy = DeadlineAwarePolicy()
    base = batch(requests=2000)
    latest = seconds_to_finish_on_dedicated(base, CLUSTER, planning_quota(CLUSTER))
    relaxed_by = CLUSTER.tick_s + 1  # just enough slack that nothing *must* start now
    snapshot = [batch(requests=2000, deadline_in=latest + relaxed_by)]
    cold = policy.decide(0.0, snapshot, CLUSTER)
    assert cold.dedicated_workers_desired == 0
    warm = ClusterState(**{**_fields(CLUSTER), "dedicated_workers_up": 7})
    assert policy.decide(0.0, snapshot, warm).dedicated_workers_desired == 7


def test_escalated_requests_go_back_to_spot_when_no_dedicated_worker_serves() -> None:
    """One escalated request on a relaxed batch does not cost a cold start: with no
    dedicated worker running or wanted it goes back to spot, which serves it now."""
    relaxed = [batch(queued_dedicated=3), batch("c", queued_dedicated=0)]
    decision = DeadlineAwarePolicy().decide(0.0, relaxed, CLUSTER)
    assert decision.dedicated_workers_desired == 0
    assert decision.returns == {"b": 3}
    greedy = GreedyPolicy().decide(0.0, [batch(queued_dedicated=1)], CLUSTER)
    assert greedy.dedicated_workers_desired == 1 and not greedy.returns


@pytest.mark.parametrize(
    "fleet",
    [
        {"dedicated_workers_up": 1},
        {"dedicated_boot_remaining_s": (120.0,)},
        {"spot_workers_up": 0},
    ],
    ids=["a dedicated worker serves", "one is starting", "no spot serves"],
)
def test_escalated_requests_stay_while_dedicated_serves_them_or_spot_cannot(
    fleet: dict[str, object],
) -> None:
    cluster = ClusterState(**{**_fields(CLUSTER), **fleet})  # type: ignore[arg-type]
    decision = DeadlineAwarePolicy().decide(0.0, [batch(queued_dedicated=3)], cluster)
    assert decision.returns == {}


def test_queued_dedicated_work_needed_by_a_deadline_is_not_returned() -> None:
    """A batch whose deadline needs dedicated workers now keeps its dedicated queue."""
    urgent = batch(requests=2000, deadline_in=2 * HOUR, queued_dedicated=50)
    decision = DeadlineAwarePolicy().decide(0.0, [urgent], CLUSTER)
    assert decision.dedicated_workers_desired > 0
    assert decision.returns == {}


def test_uniform_progress_moves_only_what_is_behind_the_line() -> None:
    # Half the window gone, nothing done: about half the batch is behind the line.
    b = batch(requests=1000, deadline_in=12 * HOUR, created_ago=12 * HOUR)
    moved = UniformProgressPolicy().decide(0.0, [b], CLUSTER).moves["b"]
    assert 450 < moved < 600


def test_all_dedicated_and_spot_only() -> None:
    b = batch(requests=100)
    everything = policy_by_name("all-dedicated")
    assert not everything.uses_spot
    decision = everything.decide(0.0, [b], CLUSTER)
    assert decision.dedicated_workers_desired == 8 and sum(decision.moves.values()) > 0
    nothing = policy_by_name("spot-only")
    assert nothing.escalation is None
    assert nothing.decide(0.0, [batch(requests=100, deadline_in=1.0)], CLUSTER).moves == {}


def test_policy_names() -> None:
    for name in POLICY_NAMES:
        assert policy_by_name(name).name in POLICY_NAMES
    assert policy_by_name("default").name == "deadline-aware"
    with pytest.raises(ValueError, match="unknown policy"):
        policy_by_name("cheapest")


# -- properties over random snapshots ------------------------------------------------------


def _fields(cluster: ClusterState) -> dict[str, object]:
    return {name: getattr(cluster, name) for name in cluster.__slots__}


def random_snapshot(rng: random.Random) -> tuple[list[BatchState], ClusterState]:
    batches = []
    for i in range(rng.randint(1, 8)):
        queued = rng.randint(0, 3000)
        batches.append(
            BatchState(
                batch_id=f"b{i}",
                created_at=-rng.uniform(0, 20 * HOUR),
                deadline_at=rng.uniform(-HOUR, 24 * HOUR),
                total=queued + 100,
                queued_spot=queued,
                queued_dedicated=rng.randint(0, 20),
                running_spot=rng.randint(0, 30),
                running_dedicated=rng.randint(0, 30),
                mean_service_seconds=rng.uniform(5, 200),
                tail_service_seconds=rng.uniform(100, 900),
            )
        )
    cluster = ClusterState(
        slots_per_worker=rng.randint(1, 16),
        max_dedicated_workers=rng.randint(1, 20),
        dedicated_cold_start_s=rng.uniform(0, 600),
        tick_s=rng.uniform(1, 60),
        spot_workers_up=rng.randint(0, 20),
        dedicated_workers_up=rng.randint(0, 5),
        dedicated_boot_remaining_s=tuple(rng.uniform(0, 300) for _ in range(rng.randint(0, 3))),
    )
    return batches, cluster


@pytest.mark.parametrize("name", ["deadline-aware", "greedy", "uniform-progress", "all-dedicated"])
def test_decisions_stay_within_queue_and_quota(name: str) -> None:
    rng = random.Random(7)
    policy = policy_by_name(name)
    for _ in range(300):
        batches, cluster = random_snapshot(rng)
        decision = policy.decide(0.0, batches, cluster)
        queued = {b.batch_id: b.queued_spot for b in batches}
        assert all(0 < n <= queued[k] for k, n in decision.moves.items())
        assert 0 <= decision.dedicated_workers_desired <= cluster.max_dedicated_workers


def test_deadline_aware_keeps_the_invariant_when_it_can() -> None:
    """With the desired workers started, every EDF prefix that can be saved would be:
    the invariant holds for the count the policy asks for."""
    rng = random.Random(11)
    policy = DeadlineAwarePolicy()
    for _ in range(300):
        batches, cluster = random_snapshot(rng)
        desired = policy.decide(0.0, batches, cluster).dedicated_workers_desired
        ready = _ready_times(cluster, planning_quota(cluster))
        work, requests = 0.0, 0
        for b in edf(batches):
            work += b.work(cluster.slots_per_worker)
            requests += b.remaining
            need = warm_workers_needed(work, requests, b.deadline_at - b.guard, cluster, ready)
            if need is not None:
                assert need <= desired


def test_warm_workers_needed_grows_with_work() -> None:
    ready = _ready_times(CLUSTER)
    counts = [
        warm_workers_needed(w, 10_000, 2 * HOUR, CLUSTER, ready) for w in range(0, 60_001, 500)
    ]
    feasible = [n for n in counts if n is not None]
    assert feasible == sorted(feasible)
    assert counts[0] == 0 and counts[-1] is None


# -- holding dedicated workers -------------------------------------------------------------


def test_autoscale_target_holds_then_releases() -> None:
    def decision(n: int, hold: float) -> Decision:
        return Decision(dedicated_workers_desired=n, hold_s=hold)

    count, state = autoscale_target(0.0, decision(6, 0.0), ())
    assert count == 6
    count, state = autoscale_target(30.0, decision(2, 300.0), state)
    assert count == 6  # held: 6 was desired 30 s ago
    count, state = autoscale_target(60.0, decision(8, 300.0), state)
    assert count == 8  # scaling up is immediate
    count, state = autoscale_target(400.0, decision(1, 300.0), state)
    assert count == 1 and state == ((400.0, 1),)


def test_hold_bridges_an_outage_only_to_a_near_call_back() -> None:
    down = ClusterState(**{**_fields(CLUSTER), "spot_workers_up": 0, "spot_availability": 0.5})
    policy = DeadlineAwarePolicy()
    base = batch(requests=2000)
    latest = seconds_to_finish_on_dedicated(base, CLUSTER, planning_quota(CLUSTER))
    soon = policy.decide(0.0, [batch(requests=2000, deadline_in=latest + 600)], down)
    assert soon.dedicated_workers_desired == 0 and 600 < soon.hold_s < 2 * 600 + 300
    far = policy.decide(0.0, [batch(requests=2000, deadline_in=latest + 6 * HOUR)], down)
    assert far.hold_s == 0.0  # the call-back is past the break-even: release at once
    up = policy.decide(0.0, [batch(requests=2000, deadline_in=latest + 600)], CLUSTER)
    assert up.hold_s == 0.0  # spot serves: nothing will call the workers back


def test_availability_forgets_with_its_halflife() -> None:
    assert smoothed_availability(1.0, False, AVAILABILITY_HALFLIFE_S) == pytest.approx(0.5)
    assert smoothed_availability(0.5, True, AVAILABILITY_HALFLIFE_S) == pytest.approx(0.75)
    assert smoothed_availability(0.2, True, 0.0) == 0.2


def test_fleet_memory_tracks_workers_that_are_still_starting() -> None:
    fleet = FleetMemory(cold_start_s=100.0)
    fleet.observe(0.0, spot_up=2, dedicated_up=0, desired=0)
    fleet.ask(0.0, desired=2, dedicated_up=0)
    assert fleet.boot_remaining(30.0) == (70.0, 70.0)
    fleet.observe(40.0, spot_up=0, dedicated_up=0, desired=2)
    fleet.ask(40.0, desired=3, dedicated_up=0)  # one more, asked later
    assert fleet.boot_remaining(50.0) == (50.0, 50.0, 90.0)
    fleet.observe(110.0, spot_up=0, dedicated_up=2, desired=3)  # the first two serve
    assert fleet.boot_remaining(110.0) == (30.0,)
    fleet.ask(110.0, desired=2, dedicated_up=2)  # the third is no longer wanted
    assert fleet.boot_remaining(120.0) == ()
    assert 0.0 < fleet.availability < 1.0  # spot was gone for 70 of 110 s
