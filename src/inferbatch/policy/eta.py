"""Estimated completion times: when each unfinished batch's last request settles, from the
work it has left, the work ahead of it in the queue's claim order and the fleet's capacity;
and admission: whether a new batch can finish within its window (pure: no I/O, no clock;
``now`` is an argument).

The scheduler's escalate duty calls :func:`estimate` every tick (``estimated_completion_at``
of each in-progress batch) and keeps a :class:`ThroughputMeter`; the batch service calls
:func:`estimate` and :func:`admit` at create; the simulator can call both with its figures.

Units: seconds for times and durations (``now``, deadlines and estimates on one clock,
e.g. Unix seconds); *slots* for capacity (a worker runs ``slots_per_worker`` requests at
once: ``workers x slots_per_worker`` slots); *slot-seconds* for work (a request that holds
a slot for ``s`` seconds costs ``s`` slot-seconds).

The model: a fluid queue served in claim order.

- One queue in the claim order (priority DESC, deadline ASC, then the oldest), served by
  every slot of both pools: dedicated workers run spot work when their own queue is empty
  and escalation keeps the order, so the two pools drain one order between them.
- Requests running now hold their slots first. Their ages are spread over a service time,
  so each has half of it left on average: ``s / 2`` slot-seconds, ahead of all queued work
  whatever batch it belongs to. Requests claimed beyond the slots (workers claim a little
  ahead) wait a whole ``s``.
- Slots are shared in order: a batch's requests are claimed after everything ahead of it,
  and a later batch starts on the slots the earlier one frees while its last requests run
  (no batch waits for the previous one to end). With ``B`` the slot-seconds of everything
  that must start before a batch's last queued request (running work, the queued work
  ahead, its own), that request starts once the capacity has delivered ``B`` less what
  the other slots still run then (half a service time each), and ends ``s`` later:
  ``T(B) + s / 2``, where ``T(B)`` is when the capacity has delivered ``B``; never sooner
  than one service time from now. With fewer requests than slots this overestimates by at
  most ``s / 2``. A batch with nothing queued ends with the last of its ``R`` running
  requests: ``s * R / (R + 1)`` from now (the largest of ``R`` residues spread over ``s``).
- Capacity is a step function: the slots serving now, plus slots that start serving later
  (dedicated workers still starting; at admission, the rest of the dedicated quota after
  the cold start). No workers up: the estimate assumes what the autoscaler was asked for
  (the dedicated workers the escalate duty asked for, after their cold start). With no
  slot now and none coming the estimate is *unknown* (None): nothing says when capacity
  returns (a spot fleet may come back in a minute or in a day), and a made-up time would
  read as a promise.
- Measured throughput wins over slots / mean service when it has enough evidence
  (:class:`ThroughputMeter`): the slot model assumes every slot is busy with requests that
  take the measured mean, and misses what the fleet actually loses (slots a worker leaves
  empty between claims and flushes, attempts that fail and run again, an engine slower
  than its in-flight limit suggests, a service time that is still the prior). The meter
  measures the ratio of slot-seconds the fleet delivered to slot-seconds it had
  (``efficiency``) over the last minutes in which it had more work than slots; the
  capacity is scaled by it. With one model, the estimate then is the remaining requests
  over the measured settle rate, whatever the service time estimate says. The slot model
  is also wrong in a way the meter fixes: the measured service time runs from the claim
  to the result, so it includes the time a request waits on its worker behind the slots
  (workers claim a little ahead); a settle rate has no such bias. Until
  :data:`MIN_SETTLED` requests have settled on a saturated fleet the slot model is all
  there is.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

MIN_CHANGE_S = 2.0
MIN_CHANGE_SHARE = 0.02
"""A stored estimate is rewritten only when the new one differs by more than
``max(MIN_CHANGE_S, MIN_CHANGE_SHARE x the time left)``: most ticks move an estimate by a
fraction of a second, and rewriting every batch row every tick would cost WAL for nothing."""

MIN_SETTLED = 20
"""Requests settled while the fleet was saturated before measured throughput replaces the
slot model (see the module docstring)."""

METER_WINDOW_S = 600.0
"""How far back the throughput meter looks: the last ten minutes."""


@dataclass(frozen=True, slots=True)
class Work:
    """One unfinished batch as the estimator sees it."""

    batch_id: str
    priority: int
    deadline_at: float
    created_at: float
    queued: int
    """Requests waiting for a slot (queued on either pool, or not ingested yet)."""
    running: int
    """Requests a worker holds now."""
    service_s: float
    """Mean seconds a request of this batch holds a slot: measured for its model, else the
    configured prior."""


@dataclass(frozen=True, slots=True)
class Capacity:
    """What serves the queue: ``slots`` now, and ``later`` ``(seconds from now, slots)``
    that start serving then."""

    slots: int
    later: tuple[tuple[float, int], ...] = ()
    efficiency: float | None = None
    """Measured slot-seconds delivered per slot-second offered (:class:`ThroughputMeter`);
    None: not measured enough, every slot counts whole."""

    @property
    def scale(self) -> float:
        return self.efficiency if self.efficiency is not None else 1.0

    @property
    def tail_scale(self) -> float:
        """How much of a mean service time one request takes. An efficiency above 1 can only
        mean the service time is overestimated (a slot delivers at most one slot-second a
        second): it is still the prior, or it includes the wait behind the slots of a
        worker that claimed ahead. So per-request terms shrink by it too; one below 1 is
        slots left empty, which lengthens the queue, not a request."""
        return min(1.0, 1.0 / self.scale)

    def delivery_time(self, work: float) -> float | None:
        """Seconds from now until ``work`` slot-seconds are delivered; None if never."""
        if work <= 0.0:
            return 0.0
        t, slots, done = 0.0, float(self.slots), 0.0
        for at, extra in sorted(self.later):
            at = max(0.0, at)
            rate = slots * self.scale
            if rate > 0.0 and done + rate * (at - t) >= work:
                return t + (work - done) / rate
            done += rate * (at - t)
            t, slots = at, slots + extra
        rate = slots * self.scale
        return t + (work - done) / rate if rate > 0.0 else None


def claim_order(batches: Sequence[Work]) -> list[Work]:
    """Batches in the queue's claim order: highest priority, then earliest deadline, then
    the oldest (then id, for a stable order)."""
    return sorted(batches, key=lambda b: (-b.priority, b.deadline_at, b.created_at, b.batch_id))


def running_work(batches: Sequence[Work], capacity: Capacity) -> float:
    """Slot-seconds the running requests of every batch still hold: half a service time
    each for those in a slot, a whole one for those claimed beyond the slots."""
    running = sum(b.running for b in batches)
    if running == 0:
        return 0.0
    in_slots = min(1.0, capacity.slots / running)
    left = 1.0 - in_slots / 2
    return sum(b.running * b.service_s * left for b in batches)


def _last_end(now: float, delivered_in: float | None, service_s: float) -> float | None:
    """When a batch's last queued request ends: half a service time after the capacity
    has delivered everything up to it (``delivered_in`` seconds from now), and no sooner
    than one service time from now (see the module docstring)."""
    if delivered_in is None:
        return None
    return now + max(service_s, delivered_in + service_s / 2)


def estimate(now: float, batches: Sequence[Work], capacity: Capacity) -> dict[str, float | None]:
    """Each batch's estimated completion time (``now``'s clock): when its last request
    settles. None when unknown (no capacity now or later). Batches with nothing left are
    estimated at ``now``."""
    out: dict[str, float | None] = {}
    if capacity.delivery_time(1.0) is None:
        return dict.fromkeys((b.batch_id for b in batches), None)
    ahead = running_work(batches, capacity)
    tail = capacity.tail_scale
    for b in claim_order(batches):
        s = b.service_s * tail
        if b.queued == 0:
            out[b.batch_id] = now + s * b.running / (b.running + 1)
            continue
        ahead += b.queued * b.service_s
        out[b.batch_id] = _last_end(now, capacity.delivery_time(ahead), s)
    return out


def moved(stored: float | None, new: float | None, now: float) -> bool:
    """Whether ``new`` differs enough from the ``stored`` estimate to be written (see
    :data:`MIN_CHANGE_S`)."""
    if stored is None or new is None:
        return stored is not new
    return abs(new - stored) > max(MIN_CHANGE_S, MIN_CHANGE_SHARE * (new - now))


# -- admission -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a new batch fits its window."""

    finish_at: float | None
    """Its estimated completion with the window asked for (None: unknown, no capacity)."""
    fits: bool
    shortest_window_s: float | None
    """The shortest window from :func:`window_steps` (at least the one asked for) with
    which it would fit; None when none up to the largest does."""


def window_steps(low_s: float, high_s: float) -> list[float]:
    """Candidate windows between ``low_s`` and ``high_s`` as a user would write them:
    whole minutes below an hour, whole hours above (``"45m"``, ``"26h"``), and ``high_s``."""
    steps = [m * 60.0 for m in range(1, 60)] + [
        h * 3600.0 for h in range(1, 1 + int(high_s // 3600))
    ]
    return sorted({s for s in steps if low_s <= s <= high_s} | {high_s})


def admit(
    now: float,
    batches: Sequence[Work],
    *,
    priority: int,
    requests: int,
    service_s: float,
    window_s: float,
    windows: Sequence[float],
    capacity: Capacity,
) -> Admission:
    """Can a new batch of ``requests`` requests at ``priority`` (``service_s`` each), asked
    for with a window of ``window_s``, finish in time behind ``batches`` on ``capacity``?

    Its place in the claim order depends on its deadline: a longer window puts it behind
    more work. The shortest window that fits is searched among ``windows`` at least as long
    as the one asked for; a shorter one is never suggested, since it would only move the
    batch ahead of batches accepted earlier, whose own deadlines admission does not recheck.
    """
    running = running_work(batches, capacity)
    higher = sum(b.queued * b.service_s for b in batches if b.priority > priority)
    same = sorted(
        (b.deadline_at, b.queued * b.service_s) for b in batches if b.priority == priority
    )
    deadlines = [d for d, _ in same]
    prefix = [0.0]
    for _, w in same:
        prefix.append(prefix[-1] + w)
    own = requests * service_s
    s = service_s * capacity.tail_scale

    def finish(window: float) -> float | None:
        # equal deadlines: the older batch is claimed first, so those are ahead too
        ahead = prefix[bisect.bisect_right(deadlines, now + window)]
        return _last_end(now, capacity.delivery_time(running + higher + ahead + own), s)

    at = finish(window_s)
    fits = at is not None and at <= now + window_s
    if fits:
        return Admission(at, True, window_s)
    for w in windows:
        if w <= window_s:
            continue
        end = finish(w)
        if end is not None and end <= now + w:
            return Admission(at, False, w)
    return Admission(at, False, None)


def format_window(seconds: float) -> str:
    """A window as ``completion_window`` takes it: ``"45m"`` below an hour, else ``"26h"``
    (rounded up)."""
    if seconds < 3600.0:
        return f"{max(1, math.ceil(seconds / 60.0))}m"
    return f"{math.ceil(seconds / 3600.0)}h"


# -- measured throughput --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Span:
    end: float
    seconds: float
    offered: float
    """Slot-seconds the fleet had over the span."""
    settled: Mapping[str | None, int]
    """Requests settled over the span, by model (None: a batch of several models)."""


@dataclass
class ThroughputMeter:
    """Requests settled per second, by model, over the last minutes in which the fleet had
    more work than slots, kept in memory from the per-batch counts the escalate duty reads
    every tick (no query of its own).

    Between two observations a batch present in both settled what its unsettled count
    lost (never below zero: a retry re-queues). The span counts only when the fleet was
    saturated at both ends (unsettled requests at least the slots): an idle slot measures
    demand, not capacity. A leader that just took over starts with nothing measured.
    """

    window_s: float = METER_WINDOW_S
    spans: deque[_Span] = field(default_factory=deque)
    last: tuple[float, dict[str, tuple[str | None, int]], int] | None = None

    def observe(
        self, now: float, unsettled: Mapping[str, tuple[str | None, int]], slots: int
    ) -> None:
        """Record a tick: ``unsettled[batch_id] = (model, queued + running)`` of every
        in-progress batch, and the slots serving now."""
        current = dict(unsettled)
        if self.last is not None:
            then, before, slots_before = self.last
            saturated = (
                slots_before > 0
                and slots > 0
                and sum(n for _, n in before.values()) >= slots_before
                and sum(n for _, n in current.values()) >= slots
            )
            if saturated and now > then:
                settled: dict[str | None, int] = {}
                for batch_id, (model, n) in current.items():
                    old = before.get(batch_id)
                    if old is not None and old[1] > n:
                        settled[model] = settled.get(model, 0) + old[1] - n
                offered = (now - then) * (slots_before + slots) / 2
                self.spans.append(_Span(now, now - then, offered, settled))
        self.last = (now, current, slots)
        while self.spans and self.spans[0].end < now - self.window_s:
            self.spans.popleft()

    def efficiency(self, service: Callable[[str | None], float]) -> float | None:
        """Slot-seconds delivered per slot-second offered over the saturated spans, each
        settled request counted at ``service(model)`` seconds (the current estimate, so a
        measurement that replaces the prior re-weighs the past too).

        Counted from the end of the first span that settled anything to the end of the last
        one: requests of similar length finish in waves, and a count over a fixed window
        cuts a wave in two (off by up to a wave), while one from a settle to a settle holds
        whole waves. None until :data:`MIN_SETTLED` requests, and at least a round of the
        slots, settled that way."""
        spans = list(self.spans)
        settling = [i for i, span in enumerate(spans) if span.settled]
        if len(settling) < 2:
            return None
        counted = spans[settling[0] + 1 : settling[-1] + 1]
        counts: dict[str | None, int] = {}
        for span in counted:
            for model, n in span.settled.items():
                counts[model] = counts.get(model, 0) + n
        settled = sum(counts.values())
        seconds = sum(span.seconds for span in counted)
        offered = sum(span.offered for span in counted)
        if offered <= 0.0 or settled < max(MIN_SETTLED, offered / seconds):
            return None
        return sum(n * service(model) for model, n in counts.items()) / offered
