"""Jinja filters and helpers: times, durations, sizes, JSON, status colours, URLs.

Everything here returns plain text; the template engine escapes it (autoescape is on for
every template), so user-supplied values are always shown as text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment

BATCH_STATUS_CLASS = {
    "validating": "secondary",
    "in_progress": "primary",
    "finalizing": "info",
    "completed": "success",
    "failed": "danger",
    "expired": "warning",
    "cancelling": "warning",
    "cancelled": "dark",
}
REQUEST_STATUS_CLASS = {
    "queued": "secondary",
    "running": "primary",
    "waiting": "info",
    "completed": "success",
    "failed": "danger",
    "cancelled": "dark",
    "expired": "warning",
}


def when(value: datetime | None) -> str:
    """``2025-03-01 12:00:03 UTC`` (or a dash)."""
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def short_time(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%m-%d %H:%M")


def duration(seconds: float | timedelta | None) -> str:
    """``850 ms``, ``12.5 s``, ``4 min 05 s``, ``3 h 20 min``, ``2 d 4 h``."""
    if seconds is None:
        return "—"
    s = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
    sign = "-" if s < 0 else ""
    s = abs(s)
    if s < 1:
        return f"{sign}{s * 1000:.0f} ms"
    if s < 60:
        return f"{sign}{s:.1f} s"
    if s < 3600:
        return f"{sign}{int(s // 60)} min {int(s % 60):02d} s"
    if s < 86400:
        return f"{sign}{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
    return f"{sign}{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def relative(value: datetime | None, now: datetime | None) -> str:
    """``5 min ago`` / ``in 3 h 10 min``."""
    if value is None or now is None:
        return ""
    delta = (value - now).total_seconds()
    if abs(delta) < 1:
        return "now"
    text = duration(abs(delta)).replace(" 00 s", "").replace(" 00 min", "")
    return f"in {text}" if delta > 0 else f"{text} ago"


def from_epoch(value: int | None) -> datetime | None:
    """A wire timestamp (seconds since the epoch) as an aware datetime."""
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


def size(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def number(n: float | int | None) -> str:
    if n is None:
        return "—"
    if isinstance(n, float) and not n.is_integer():
        return f"{n:,.1f}"
    return f"{int(n):,}"


def percent(part: float, whole: float) -> str:
    return "—" if not whole else f"{100 * part / whole:.0f}%"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def priority_label(p: int) -> str:
    if p >= 10:
        return "high"
    if p >= 5:
        return "medium"
    return "normal"


def url_with(path: str, params: Mapping[str, Any], **changes: Any) -> str:
    """``path`` with ``params`` updated by ``changes``; empty values are left out."""
    merged = {**params, **changes}
    kept = {k: v for k, v in merged.items() if v not in (None, "")}
    return path + ("?" + urlencode(kept) if kept else "")


def install(env: Environment) -> None:
    env.filters.update(
        when=when,
        short_time=short_time,
        duration=duration,
        size=size,
        number=number,
        pretty_json=pretty_json,
        priority_label=priority_label,
    )
    env.globals.update(
        relative=relative,
        from_epoch=from_epoch,
        percent=percent,
        url_with=url_with,
        batch_class=lambda s: BATCH_STATUS_CLASS.get(s, "secondary"),
        request_class=lambda s: REQUEST_STATUS_CLASS.get(s, "secondary"),
    )
