"""Spot availability traces: the JSON format of ``shared/data/spot-traces`` and how a trace
becomes a number of spot workers over time.

Format: ``{"metadata": {"gap_seconds": 195, ...}, "data": [1, 1, 0, ...]}``; ``data[i]``
is how many spot instances were available during tick ``i`` of ``gap_seconds``. Optional
metadata this module understands: ``nodes`` (the most instances the probe asked for;
default: the largest value in ``data``), ``cloud`` (``aws``, ``gcp``, ``azure``; default:
guessed from the path) and ``notice_seconds`` (the interruption notice; default: the
cloud's, 120 s on AWS, 30 s elsewhere). Other keys (e.g. ``prices``) are ignored.

Scale: a trace at its ``nodes`` means the simulated cluster's whole spot fleet, so a
1-node trace switches the whole fleet on and off at once (one zone's capacity for that GPU
type), and a 16-node trace moves it in sixteenths. A simulation longer than its trace
replays the trace from the start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

NOTICE_SECONDS = {"aws": 120.0, "gcp": 30.0, "azure": 30.0}
"""Interruption notice per cloud. Unknown clouds get the shortest (more work is lost)."""
UNKNOWN_NOTICE_SECONDS = 30.0


class TraceError(ValueError):
    """A trace file that does not follow the format."""


@dataclass(frozen=True, slots=True)
class SpotTrace:
    name: str
    gap_seconds: float
    counts: tuple[int, ...]
    nodes: int
    cloud: str
    notice_seconds: float

    @property
    def duration(self) -> float:
        return self.gap_seconds * len(self.counts)

    @property
    def mean_availability(self) -> float:
        """Mean share of the peak that was available."""
        return sum(self.counts) / (len(self.counts) * self.nodes)

    def workers(self, index: int, fleet: int) -> int:
        """Spot workers available during tick ``index`` (cycling) for a fleet of ``fleet``."""
        count = self.counts[index % len(self.counts)]
        return min(fleet, round(count * fleet / self.nodes))

    def segments(self, fleet: int, until: float) -> Iterator[tuple[float, float, int]]:
        """``(start, end, workers)`` spans of constant spot capacity from 0 to ``until``."""
        start, current, index = 0.0, self.workers(0, fleet), 1
        while True:
            t = index * self.gap_seconds
            if t >= until:
                yield start, until, current
                return
            value = self.workers(index, fleet)
            if value != current:
                yield start, t, current
                start, current = t, value
            index += 1


def _cloud_of(metadata: dict[str, object], path: Path) -> str:
    cloud = metadata.get("cloud")
    if isinstance(cloud, str):
        return cloud.lower()
    for part in reversed(path.parts):
        for name in NOTICE_SECONDS:
            if part.lower().startswith(name):
                return name
    return "unknown"


def load_trace(path: Path, name: str | None = None) -> SpotTrace:
    """Read one trace file; raises ``TraceError`` when it does not follow the format."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TraceError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list) or not raw["data"]:
        raise TraceError(f"{path}: expected an object with a non-empty 'data' list")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise TraceError(f"{path}: 'metadata' must be an object")
    counts = raw["data"]
    if not all(isinstance(c, int) and c >= 0 for c in counts):
        raise TraceError(f"{path}: 'data' must hold non-negative integers")
    gap = metadata.get("gap_seconds")
    if not isinstance(gap, int | float) or gap <= 0:
        raise TraceError(f"{path}: metadata.gap_seconds must be a positive number")
    nodes = metadata.get("nodes", max(counts))
    if not isinstance(nodes, int) or nodes < 0:
        raise TraceError(f"{path}: metadata.nodes must be a non-negative integer")
    cloud = _cloud_of(metadata, path)
    notice = metadata.get("notice_seconds", NOTICE_SECONDS.get(cloud, UNKNOWN_NOTICE_SECONDS))
    if not isinstance(notice, int | float) or notice < 0:
        raise TraceError(f"{path}: metadata.notice_seconds must be a non-negative number")
    return SpotTrace(
        name=name or path.stem,
        gap_seconds=float(gap),
        counts=tuple(counts),
        nodes=max(1, nodes, max(counts)),
        cloud=cloud,
        notice_seconds=float(notice),
    )


def trace_files(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """Expand directories into their ``*.json`` files (recursively, sorted); each file with
    a display name: its path below the directory given, without ``.json``."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*.json")):
                found.append((file, file.relative_to(path).with_suffix("").as_posix()))
        else:
            found.append((path, path.stem))
    return found
