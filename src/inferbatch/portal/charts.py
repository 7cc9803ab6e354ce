"""Charts drawn on the server as inline SVG: no JavaScript library, nothing to load.

This module computes geometry (bars, ticks, legend) from numbers; ``partials/chart.html``
draws it. Colours come from CSS classes named by each series.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from inferbatch.portal.formatting import duration

WIDTH, HEIGHT = 560, 200
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 10, 24
RANGES = {"1h": (3600, 60), "6h": (6 * 3600, 300), "24h": (86400, 900)}
"""Dashboard chart ranges: span and bucket, in seconds."""
_NICE_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    css: str
    tip: str


@dataclass(frozen=True, slots=True)
class Tick:
    pos: float
    text: str


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    css: str
    values: Sequence[float]


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    summary: str
    rects: list[Rect]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    legend: list[tuple[str, str]]
    empty: bool
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM

    @property
    def right(self) -> int:
        return self.width - RIGHT


def axis(max_value: float, ticks: int = 4) -> tuple[float, float]:
    """The top of a count axis and its tick step: a step of 1, 2 or 5 times a power of ten
    (never below 1, since the axis counts things) giving about ``ticks`` steps."""
    raw = max(max_value, 1.0) / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    step = max(next(m * power for m in (1, 2, 5, 10) if m * power >= raw), 1.0)
    return step * max(1, math.ceil(max_value / step)), step


def _tick_text(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def stacked_bars(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str,
    label_every: int,
    width: int = WIDTH,
) -> Chart:
    """One bar per label, the series stacked bottom-up in the order given."""
    n = len(labels)
    totals = [sum(s.values[i] for s in series) for i in range(n)]
    top_value, step = axis(max(totals, default=0))
    plot_w, plot_h = width - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(n, 1)
    gap = min(2.0, slot * 0.2)
    rects: list[Rect] = []
    for i in range(n):
        base = 0.0
        for s in series:
            v = s.values[i]
            if v <= 0:
                continue
            h = plot_h * v / top_value
            y = TOP + plot_h - plot_h * (base + v) / top_value
            rects.append(
                Rect(
                    LEFT + i * slot + gap / 2,
                    y,
                    slot - gap,
                    h,
                    s.css,
                    f"{labels[i]}: {v:g} {s.name}",
                )
            )
            base += v
    y_ticks = [
        Tick(TOP + plot_h - plot_h * k * step / top_value, _tick_text(k * step))
        for k in range(round(top_value / step) + 1)
    ]
    x_ticks = [Tick(LEFT + (i + 0.5) * slot, labels[i]) for i in range(0, n, max(label_every, 1))]
    total = sum(totals)
    parts = ", ".join(f"{s.name} {sum(s.values):g}" for s in series)
    return Chart(
        title=title,
        summary=f"{title}: {total:g} {unit} in total ({parts}).",
        rects=rects,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        legend=[(s.css, s.name) for s in series],
        empty=total == 0,
        width=width,
    )


def latency_chart(
    title: str, edges: Sequence[float], counts: Sequence[int], *, width: int = WIDTH
) -> Chart:
    """A histogram over the bins ``width_bucket`` makes of ``edges`` (one more than edges)."""
    names = [f"< {duration(edges[0])}"]
    names += [f"{duration(a)} to {duration(b)}" for a, b in itertools.pairwise(edges)]
    names.append(f"≥ {duration(edges[-1])}")
    short = [f"<{_short(edges[0])}"] + [_short(e) for e in edges]
    chart = stacked_bars(
        title,
        names,
        [Series("requests", "c-latency", [float(c) for c in counts])],
        unit="requests",
        label_every=2,
        width=width,
    )
    ticks = [Tick(t.pos, short[i * 2]) for i, t in enumerate(chart.x_ticks)]
    return Chart(
        title=chart.title,
        summary=chart.summary,
        rects=chart.rects,
        x_ticks=ticks,
        y_ticks=chart.y_ticks,
        legend=[],
        empty=chart.empty,
        width=width,
    )


def _short(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    return f"{seconds / 60:g}m"


def pick_bucket(span_seconds: float, bars: int = 40) -> int:
    """A round bucket size giving at most about ``bars`` bars over the span."""
    for b in _NICE_BUCKETS:
        if span_seconds / b <= bars:
            return b
    return _NICE_BUCKETS[-1]


def bucket_name(seconds: int) -> str:
    """``second``, ``minute``, ``hour``, or ``5 min`` and the like."""
    names = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
    if seconds in names:
        return names[seconds]
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def time_buckets(since: datetime, until: datetime, bucket: int) -> list[datetime]:
    count = max(1, math.ceil((until - since).total_seconds() / bucket))
    return [since + timedelta(seconds=bucket * i) for i in range(count)]


def activity_charts(
    rows: Sequence[dict[str, Any]],
    since: datetime,
    until: datetime,
    bucket: int,
    *,
    width: int = WIDTH,
) -> tuple[Chart, Chart]:
    """Throughput (completed and failed per bucket) and spot-vs-dedicated work (completed
    per bucket by pool) from :func:`inferbatch.db.browse.activity_series` rows."""
    starts = time_buckets(since, until, bucket)
    index = {t: i for i, t in enumerate(starts)}
    completed, failed = [0.0] * len(starts), [0.0] * len(starts)
    by_pool = {"spot": [0.0] * len(starts), "dedicated": [0.0] * len(starts)}
    for r in rows:
        i = index.get(r["bucket"])
        if i is None:
            continue
        completed[i] += r["completed"]
        failed[i] += r["failed"]
        by_pool.setdefault(r["pool"], [0.0] * len(starts))[i] += r["completed"]
    fmt = "%H:%M:%S" if bucket < 60 else "%H:%M"
    labels = [t.strftime(fmt) for t in starts]
    every = max(1, len(starts) // 6)
    per = bucket_name(bucket)
    throughput = stacked_bars(
        f"Requests finished per {per}",
        labels,
        [Series("completed", "c-ok", completed), Series("failed", "c-bad", failed)],
        unit="requests",
        label_every=every,
        width=width,
    )
    pools = stacked_bars(
        f"Spot vs dedicated: completed per {per}",
        labels,
        [Series(p, f"c-{p}", v) for p, v in by_pool.items()],
        unit="requests",
        label_every=every,
        width=width,
    )
    return throughput, pools
