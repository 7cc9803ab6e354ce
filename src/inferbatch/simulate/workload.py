"""Workloads for the simulator: presets, the JSON file format, seeded generation.

A workload file is JSON with the fields of ``Workload`` (all optional); ``"preset"`` names
the preset it starts from (default ``mixed``), and ``cluster`` is merged field by field::

    {"preset": "mixed", "load": 0.5, "cluster": {"max_dedicated_workers": 12},
     "windows": [{"completion_window": "24h", "weight": 1, "median_requests": 500}],
     "batches": [{"arrival_s": 0, "requests": 200, "completion_window": "1h"}]}

Durations are seconds or strings such as ``"30m"``, ``"4h"``, ``"7d"``. With ``batches``
the batches are exactly those (service times still drawn from ``service``); otherwise
batches arrive as a Poisson process whose rate makes the offered work ``load`` times what
the whole spot fleet could do, the window class drawn by weight, the size lognormal and
clipped. The same seed gives the same batches whatever the policy.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inferbatch.config import parse_duration


def _seconds(value: object) -> object:
    return parse_duration(value).total_seconds() if isinstance(value, str) else value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceTimes(_Frozen):
    """Seconds a request holds one worker slot: lognormal with this mean (before the cap),
    capped at ``max_s`` (the engine timeout and ``max_tokens`` bound every request)."""

    mean_s: float = Field(default=90.0, gt=0)
    sigma: float = Field(default=0.8, ge=0, description="Standard deviation of ln(seconds).")
    max_s: float = Field(default=600.0, gt=0)

    def sample(self, rng: random.Random) -> float:
        raw = rng.lognormvariate(math.log(self.mean_s) - self.sigma**2 / 2, self.sigma)
        return min(self.max_s, raw)


class WindowClass(_Frozen):
    """Batches with one completion window, their share and their size distribution."""

    completion_window: float = Field(gt=0, description="Seconds or a duration string.")
    weight: float = Field(default=1.0, gt=0)
    median_requests: float = Field(default=500, gt=0)
    sigma: float = Field(default=1.0, ge=0)
    min_requests: int = Field(default=1, ge=1)
    max_requests: int = Field(default=10_000, ge=1)
    priority: int = Field(default=1, ge=1, description="metadata.priority of these batches.")

    _window = field_validator("completion_window", mode="before")(_seconds)

    def size(self, u: float) -> int:
        """The size at quantile ``u`` of the clipped lognormal."""
        u = min(max(u, 1e-9), 1 - 1e-9)
        raw = self.median_requests * math.exp(self.sigma * NormalDist().inv_cdf(u))
        return max(self.min_requests, min(self.max_requests, round(raw)))

    def mean_size(self) -> float:
        points = 2000
        return sum(self.size((i + 0.5) / points) for i in range(points)) / points


class ClusterSpec(_Frozen):
    """The simulated cluster. A worker is one GPU running an engine with ``slots`` in flight."""

    spot_workers: int = Field(default=8, ge=1, description="Spot fleet at the trace's peak.")
    slots_per_worker: int = Field(default=4, ge=1)
    max_dedicated_workers: int = Field(default=8, ge=1)
    dedicated_cold_start_s: float = Field(default=240.0, ge=0)
    spot_cold_start_s: float = Field(default=240.0, ge=0)
    tick_s: float = Field(default=30.0, gt=0, description="Scheduler tick.")
    notice_s: float | None = Field(default=None, ge=0, description="None: the trace's cloud.")
    availability_halflife_s: float = Field(default=6 * 3600.0, gt=0)


class BatchSpec(_Frozen):
    arrival_s: float = Field(ge=0)
    requests: int = Field(ge=1)
    completion_window: float = Field(gt=0, description="Seconds or a duration string.")
    priority: int = Field(default=1, ge=1)

    _window = field_validator("completion_window", mode="before")(_seconds)


class Workload(_Frozen):
    name: str = "mixed"
    load: float = Field(default=0.4, gt=0, description="Offered work / whole spot fleet.")
    service: ServiceTimes = ServiceTimes()
    failure_probability: float = Field(default=0.002, ge=0, lt=1)
    windows: tuple[WindowClass, ...] = ()
    batches: tuple[BatchSpec, ...] = ()
    cluster: ClusterSpec = ClusterSpec()
    spot_price_ratio: float = Field(default=0.3, gt=0, le=1, description="Spot / dedicated.")
    max_days: float | None = Field(default=None, gt=0, description="Cut longer traces.")
    metric_window: float = Field(default=86400.0, gt=0, description="Seconds per metric bucket.")

    _window = field_validator("metric_window", mode="before")(_seconds)

    @property
    def longest_window(self) -> float:
        spans = [w.completion_window for w in self.windows]
        spans += [b.completion_window for b in self.batches]
        return max(spans, default=0.0)


def _window(
    seconds: str, weight: float, median: float, sigma: float, lo: int, hi: int, priority: int = 1
) -> WindowClass:
    return WindowClass.model_validate(
        {
            "completion_window": seconds,
            "weight": weight,
            "median_requests": median,
            "sigma": sigma,
            "min_requests": lo,
            "max_requests": hi,
            "priority": priority,
        }
    )


PRESETS: dict[str, Workload] = {
    # Mostly OpenAI-style 24 h batches, some 4 h and 1 h ones; about 40 % of the spot fleet.
    "mixed": Workload(
        name="mixed",
        windows=(
            _window("24h", 0.75, 800, 1.0, 20, 6000),
            _window("4h", 0.15, 300, 0.8, 10, 1500),
            _window("1h", 0.10, 60, 0.8, 5, 300),
        ),
    ),
    # ``mixed`` plus a share of urgent work: priority-10 batches with 30 minute windows
    # (about 5 % of the batches). The queue serves them ahead of every deadline.
    "priority": Workload(
        name="priority",
        windows=(
            _window("24h", 0.75, 800, 1.0, 20, 6000),
            _window("4h", 0.15, 300, 0.8, 10, 1500),
            _window("1h", 0.10, 60, 0.8, 5, 300),
            _window("30m", 0.05, 40, 0.8, 5, 200, priority=10),
        ),
    ),
    # Only 24 h batches: the setting of the OpenAI Batch API.
    "daily": Workload(name="daily", windows=(_window("24h", 1.0, 800, 1.0, 20, 6000),)),
}


def preset(name: str) -> Workload:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown workload preset {name!r}; known: {', '.join(PRESETS)}") from None


def load_workload(path: Path) -> Workload:
    """Read a workload file (see the module docstring); ValueError when it is invalid."""
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a workload file holds a JSON object")
    base = preset(str(raw.pop("preset", "mixed"))).model_dump()
    cluster = {**base["cluster"], **raw.pop("cluster", {})}
    return Workload.model_validate({**base, **raw, "cluster": cluster})


@dataclass(frozen=True, slots=True)
class SimBatch:
    """One generated batch: when it arrives, its deadline and its requests."""

    batch_id: str
    arrival: float
    deadline: float
    service: tuple[float, ...]
    """Seconds each request holds a slot when it runs to the end."""
    failures: tuple[int, ...]
    """Failed attempts each request makes before it succeeds."""
    priority: int = 1


def generate(workload: Workload, horizon_s: float, seed: int) -> list[SimBatch]:
    """The batches of ``workload`` arriving in ``[0, horizon_s - longest window]`` (the first
    half of the horizon when it is shorter than that), by arrival time."""
    rng = random.Random(f"workload:{seed}")
    specs = list(workload.batches) or _arrivals(workload, horizon_s, rng)
    specs.sort(key=lambda s: s.arrival_s)
    out = []
    p = workload.failure_probability
    for i, spec in enumerate(specs):
        service = tuple(workload.service.sample(rng) for _ in range(spec.requests))
        failures = tuple(_failures(rng, p) for _ in range(spec.requests)) if p else ()
        out.append(
            SimBatch(
                batch_id=f"batch_{i:05d}",
                arrival=spec.arrival_s,
                deadline=spec.arrival_s + spec.completion_window,
                service=service,
                failures=failures or (0,) * spec.requests,
                priority=spec.priority,
            )
        )
    return out


def _failures(rng: random.Random, p: float) -> int:
    n = 0
    while rng.random() < p:
        n += 1
    return n


def _arrivals(workload: Workload, horizon_s: float, rng: random.Random) -> list[BatchSpec]:
    classes = workload.windows
    if not classes:
        raise ValueError("a workload needs 'windows' or 'batches'")
    end = horizon_s - workload.longest_window
    end = end if end > 0 else horizon_s / 2
    total = sum(c.weight for c in classes)
    mean_size = sum(c.weight * c.mean_size() for c in classes) / total
    c = workload.cluster
    capacity = c.spot_workers * c.slots_per_worker / workload.service.mean_s  # requests/s
    rate = workload.load * capacity / mean_size  # batches per second
    specs: list[BatchSpec] = []
    t = rng.expovariate(rate)
    while t < end:
        cls = rng.choices(classes, weights=[c.weight for c in classes])[0]
        specs.append(
            BatchSpec(
                arrival_s=t,
                requests=cls.size(rng.random()),
                completion_window=cls.completion_window,
                priority=cls.priority,
            )
        )
        t += rng.expovariate(rate)
    return specs
