"""Which engine serves which model.

From ``INFERBATCH_ENGINE_URL`` (one engine for every model) or ``INFERBATCH_ENGINES``, a
TOML or JSON file::

    [models."llama-3.1-8b-instruct"]
    url = "http://gpu-1:8000/v1"
    max_in_flight = 64

    [models."*"]             # any other model
    url = "http://gpu-2:8000/v1"
    max_in_flight = 32
    api_key = "optional"
    responses = "chat"       # /v1/responses: "native", "chat" (translated) or "auto"
    messages = "chat"        # /v1/messages (Anthropic): likewise

A model may be served by several replicas of one engine::

    [models."llama-3.1-8b-instruct"]
    urls = ["http://gpu-1:8000/v1", "http://gpu-2:8000/v1"]   # a list of replicas
    # or: url = "http://vllm.default.svc:8000/v1" with discover = "dns": every address the
    # name resolves to is a replica (a Kubernetes headless Service), resolved again often
    max_in_flight = 128      # the ceiling of each replica's adaptive in-flight limit
    concurrency = "adaptive" # or "fixed": always max_in_flight
    gpus = 1                 # GPUs behind each replica (GPU-seconds per second busy)

``INFERBATCH_ENGINE_URL`` may list several URLs, comma-separated. Models that name the same
URLs share one engine and its limits (the largest ceiling given).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from inferbatch.config import Settings
from inferbatch.engines.client import RESPONSES_MODES, Engine, HttpEngine, NoopEngine
from inferbatch.engines.limiter import AdaptiveLimit, FixedLimit, Limit, LimiterConfig
from inferbatch.engines.replicas import Replica, ReplicaSet
from inferbatch.worker.gputime import ShareClock

ANY_MODEL = "*"
CONCURRENCY_MODES = ("adaptive", "fixed")
Concurrency = Literal["adaptive", "fixed"]


@dataclass(frozen=True, slots=True)
class EngineSpec:
    urls: tuple[str, ...]
    max_in_flight: int
    api_key: str | None = None
    responses: str = "auto"
    """How ``/v1/responses`` requests reach the engine (see ``RESPONSES_MODES``)."""
    messages: str = "auto"
    """How ``/v1/messages`` requests reach the engine (the same modes)."""
    discover: bool = False
    """Resolve the one URL's host name to all its addresses, each a replica."""
    concurrency: Concurrency = "adaptive"
    gpus: float = 1.0
    latency_tolerance: float = 2.0
    """The adaptive limit's latency bound, a multiple of the unloaded latency."""

    @property
    def url(self) -> str:
        return self.urls[0]


def split_urls(value: str) -> tuple[str, ...]:
    return tuple(u.strip().rstrip("/") for u in value.split(",") if u.strip())


def load_specs(settings: Settings) -> dict[str, EngineSpec]:
    """Model name (or ``*``) -> engine spec, from the settings. Raises ValueError."""
    if settings.engine_url:
        return {
            ANY_MODEL: EngineSpec(
                split_urls(settings.engine_url),
                settings.engine_max_in_flight,
                concurrency=settings.engine_concurrency,
                latency_tolerance=settings.engine_latency_tolerance,
            )
        }
    if settings.engines is None:
        return {}
    return parse_specs(
        settings.engines,
        settings.engine_max_in_flight,
        concurrency=settings.engine_concurrency,
        latency_tolerance=settings.engine_latency_tolerance,
    )


def _urls(path: Path, name: str, entry: dict[str, Any]) -> tuple[str, ...]:
    url, urls = entry.get("url"), entry.get("urls")
    if isinstance(url, str) and urls is None:
        return split_urls(url)
    if url is None and isinstance(urls, list) and urls and all(isinstance(u, str) for u in urls):
        return tuple(u.rstrip("/") for u in urls)
    raise ValueError(f"{path}: model {name!r} needs a 'url' or a non-empty list of 'urls'")


def parse_specs(
    path: Path,
    default_in_flight: int,
    *,
    concurrency: Concurrency = "adaptive",
    latency_tolerance: float = 2.0,
) -> dict[str, EngineSpec]:
    text = path.read_text()
    data: dict[str, Any] = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{path}: expected a non-empty 'models' table")
    specs: dict[str, EngineSpec] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: model {name!r} needs a 'url'")
        urls = _urls(path, name, entry)
        in_flight = entry.get("max_in_flight", default_in_flight)
        if not isinstance(in_flight, int) or in_flight < 1:
            raise ValueError(f"{path}: model {name!r}: max_in_flight must be an integer >= 1")
        modes = {key: entry.get(key, "auto") for key in ("responses", "messages")}
        for key, mode in modes.items():
            if mode not in RESPONSES_MODES:
                raise ValueError(
                    f"{path}: model {name!r}: {key} must be one of {', '.join(RESPONSES_MODES)}"
                )
        discover = entry.get("discover")
        if discover not in (None, "dns") or (discover and len(urls) != 1):
            raise ValueError(f"{path}: model {name!r}: discover = \"dns\" takes one 'url'")
        mode = entry.get("concurrency", concurrency)
        if mode not in CONCURRENCY_MODES:
            raise ValueError(
                f"{path}: model {name!r}: concurrency must be one of {', '.join(CONCURRENCY_MODES)}"
            )
        gpus = entry.get("gpus", 1)
        if not isinstance(gpus, int | float) or gpus <= 0:
            raise ValueError(f"{path}: model {name!r}: gpus must be a positive number")
        tolerance = entry.get("latency_tolerance", latency_tolerance)
        if not isinstance(tolerance, int | float) or tolerance <= 1.25:
            raise ValueError(f"{path}: model {name!r}: latency_tolerance must be above 1.25")
        specs[name] = EngineSpec(
            urls,
            in_flight,
            entry.get("api_key"),
            modes["responses"],
            modes["messages"],
            discover=discover == "dns",
            concurrency=mode,
            gpus=float(gpus),
            latency_tolerance=float(tolerance),
        )
    return specs


NOOP_URL = "noop://"
"""An engine URL that selects the in-process no-op engine (benchmarks only)."""


def _engine_for(spec: EngineSpec, url: str, timeout: float) -> Engine:
    if url.startswith(NOOP_URL):
        return NoopEngine(spec.max_in_flight)
    return HttpEngine(
        url,
        max_in_flight=spec.max_in_flight,
        timeout=timeout,
        api_key=spec.api_key,
        responses=spec.responses,
        messages=spec.messages,
    )


def _limit_for(spec: EngineSpec) -> Limit:
    if spec.concurrency == "fixed":
        return FixedLimit(spec.max_in_flight)
    tolerance = spec.latency_tolerance
    config = LimiterConfig(
        ceiling=spec.max_in_flight,
        initial=min(spec.max_in_flight, 8),
        tolerance=tolerance,
        fast_ratio=min(1.25, tolerance),
    )
    return AdaptiveLimit(config)


def replica_set(spec: EngineSpec, *, timeout: float) -> ReplicaSet:
    """The replicas of one engine spec (resolved later, for DNS discovery)."""

    def make(url: str) -> Replica:
        return Replica(_engine_for(spec, url, timeout), _limit_for(spec), ShareClock(spec.gpus))

    name = ",".join(spec.urls)
    if spec.discover:
        return ReplicaSet(
            name, [], max_in_flight=spec.max_in_flight, discover_url=spec.url, make=make
        )
    return ReplicaSet(name, [make(u) for u in spec.urls], max_in_flight=spec.max_in_flight)


class EngineRegistry:
    """Engines by model, each a :class:`ReplicaSet`; owns their clients. An engine passed
    in by code becomes a set of one replica at its fixed limit."""

    def __init__(self, engines: dict[str, Engine | ReplicaSet]) -> None:
        wrapped: dict[int, ReplicaSet] = {}
        self._by_model: dict[str, ReplicaSet] = {}
        for model, engine in engines.items():
            if id(engine) not in wrapped:
                wrapped[id(engine)] = (
                    engine if isinstance(engine, ReplicaSet) else ReplicaSet.single(engine)
                )
            self._by_model[model] = wrapped[id(engine)]
        self.engines: list[ReplicaSet] = list(wrapped.values())

    @classmethod
    def from_specs(cls, specs: dict[str, EngineSpec], *, timeout: float) -> EngineRegistry:
        by_urls: dict[tuple[tuple[str, ...], bool], EngineSpec] = {}
        for spec in specs.values():
            key = (spec.urls, spec.discover)
            known = by_urls.get(key)
            if known is None or spec.max_in_flight > known.max_in_flight:
                by_urls[key] = spec
        sets = {key: replica_set(s, timeout=timeout) for key, s in by_urls.items()}
        return cls({model: sets[(spec.urls, spec.discover)] for model, spec in specs.items()})

    def for_model(self, model: str) -> ReplicaSet | None:
        found = self._by_model.get(model)
        return found if found is not None else self._by_model.get(ANY_MODEL)

    async def served_models(self) -> list[str]:
        """Models named in the configuration, plus what a catch-all engine lists."""
        names = {m for m in self._by_model if m != ANY_MODEL}
        catch_all = self._by_model.get(ANY_MODEL)
        if catch_all is not None:
            names.update(await catch_all.models())
        return sorted(names)

    @property
    def total_in_flight(self) -> int:
        """The most requests the engines could take at once (every limit at its ceiling)."""
        return sum(e.ceiling for e in self.engines)

    def capacity(self) -> int:
        """Requests the engines take at once now (their replicas' current limits)."""
        return sum(e.capacity() for e in self.engines)

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.aclose()
