"""Admission at create: a new batch's first estimated completion, and what happens when even
the whole dedicated quota could not finish it within its window (``INFERBATCH_ADMISSION``).

What it reads is small and does not grow with the history: one row per unfinished batch of
the new batch's priority or higher (their folded counters, or the input file's line count
before ingest), the live workers, and what the escalate duty published each tick (the
measured service times, the measured throughput efficiency, the dedicated workers it asked
for). The estimate itself is ``policy/eta.py``.

The rules:
- A file whose lines were not counted (composed from upload parts, uploaded before the
  count existed) gets no estimate at create and is never refused; the escalate duty
  estimates it once it runs.
- ``reject`` refuses with a 400 (``window_too_short``, ``param`` ``completion_window``)
  that gives the estimate and the shortest window that would work; ``warn`` accepts the
  batch with that message in its ``warnings``.
- Never refused on the prior alone: while no request has been measured (a fresh
  deployment, a new engine) the service time is ``service_seconds_prior``, a guess that
  could refuse every batch, so the outcome is a warning that says so.
- Capacity for the check: the workers up now plus, after the cold start, the rest of the
  dedicated quota (``max_dedicated_workers``). For the first estimate: the workers up now
  plus the dedicated workers the escalate duty asked for, after the cold start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from inferbatch.config import Settings, parse_duration
from inferbatch.db import batches as batch_rows
from inferbatch.db import escalation as published_rows
from inferbatch.db.types import Conn
from inferbatch.errors import InvalidRequest
from inferbatch.policy import eta

WINDOW_TOO_SHORT = "window_too_short"


@dataclass(frozen=True, slots=True)
class AdmissionRules:
    """The deployment's settings that admission works with."""

    mode: Literal["reject", "warn"]
    slots_per_worker: int
    max_dedicated_workers: int
    cold_start_s: float
    prior_s: float
    min_window_s: float
    max_window_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> AdmissionRules | None:
        """The rules, or None when admission is ``off``."""
        if settings.admission == "off":
            return None
        return cls(
            mode=settings.admission,
            slots_per_worker=settings.engine_max_in_flight,
            max_dedicated_workers=settings.max_dedicated_workers,
            cold_start_s=settings.dedicated_cold_start_seconds,
            prior_s=settings.service_seconds_prior,
            min_window_s=parse_duration(settings.min_completion_window).total_seconds(),
            max_window_s=parse_duration(settings.max_completion_window).total_seconds(),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the new batch row carries."""

    estimated_completion_at: datetime | None = None
    warnings: list[dict[str, Any]] | None = None


async def check(
    conn: Conn,
    rules: AdmissionRules,
    *,
    requests: int | None,
    priority: int,
    window: timedelta,
    now: datetime,
) -> Outcome:
    """The first estimate of a new batch of ``requests`` lines and its admission; raises
    ``InvalidRequest`` (``window_too_short``) when it must be refused."""
    if requests is None:
        return Outcome()
    published = await published_rows.published_all(conn)
    live = await published_rows.live_workers(conn)
    rows = await batch_rows.unfinished_work(conn, priority)
    measured: dict[str, float] = {
        str(k): float(v) for k, v in (published.get(published_rows.SERVICE_SECONDS) or {}).items()
    }
    overall = measured.get("*")
    service_s = overall if overall is not None else rules.prior_s

    def service(model: str | None) -> float:
        return measured.get(model or "*", service_s)

    clock = now.timestamp()
    ahead = [
        eta.Work(
            batch_id=r["id"],
            priority=r["priority"],
            deadline_at=r["deadline_at"],
            created_at=r["created_at"],
            queued=int(r["unsettled"]),
            running=0,
            service_s=service(r["model"]),
        )
        for r in rows
    ]
    efficiency = published.get(published_rows.EFFICIENCY)
    per = rules.slots_per_worker
    up = live.get("spot", 0) + live.get("dedicated", 0)
    dedicated_up = live.get("dedicated", 0)
    asked = int(published.get(published_rows.DESIRED_DEDICATED) or 0)

    def capacity(dedicated: int) -> eta.Capacity:
        coming = max(0, dedicated - dedicated_up) * per
        later = ((rules.cold_start_s, coming),) if coming else ()
        return eta.Capacity(up * per, later, float(efficiency) if efficiency else None)

    window_s = window.total_seconds()
    kwargs: dict[str, Any] = {
        "priority": priority,
        "requests": requests,
        "service_s": service_s,
        "window_s": window_s,
    }
    first = eta.admit(clock, ahead, windows=(), capacity=capacity(asked), **kwargs)
    estimated = _datetime(first.finish_at)
    steps = eta.window_steps(rules.min_window_s, rules.max_window_s)
    quota = eta.admit(
        clock, ahead, windows=steps, capacity=capacity(rules.max_dedicated_workers), **kwargs
    )
    if quota.fits or quota.finish_at is None:
        return Outcome(estimated)  # in time, or no capacity at all: nothing to say
    message = (
        f"The batch is estimated to finish in about {eta.format_window(quota.finish_at - clock)}"
        f" ({datetime.fromtimestamp(quota.finish_at, UTC):%Y-%m-%d %H:%M} UTC), after its "
        "completion_window of "
        f"{eta.format_window(window_s)}, even with all {rules.max_dedicated_workers} dedicated "
        "workers; "
        + (
            f"a completion_window of {eta.format_window(quota.shortest_window_s)} would work."
            if quota.shortest_window_s is not None
            else f"no completion_window up to {eta.format_window(rules.max_window_s)} would."
        )
    )
    if overall is None:
        message += (
            f" The estimate assumes {rules.prior_s:g} s per request: no request has been "
            "measured yet."
        )
    if rules.mode == "reject" and overall is not None:
        raise InvalidRequest(message, param="completion_window", code=WINDOW_TOO_SHORT)
    warning = {"code": WINDOW_TOO_SHORT, "message": message, "param": "completion_window"}
    return Outcome(estimated, [warning])


def _datetime(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None
