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

Models that name the same URL share one engine and its in-flight limit (the largest
given).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferbatch.config import Settings
from inferbatch.engines.client import RESPONSES_MODES, Engine, HttpEngine, NoopEngine

ANY_MODEL = "*"


@dataclass(frozen=True, slots=True)
class EngineSpec:
    url: str
    max_in_flight: int
    api_key: str | None = None
    responses: str = "auto"
    """How ``/v1/responses`` requests reach the engine (see ``RESPONSES_MODES``)."""
    messages: str = "auto"
    """How ``/v1/messages`` requests reach the engine (the same modes)."""


def load_specs(settings: Settings) -> dict[str, EngineSpec]:
    """Model name (or ``*``) -> engine spec, from the settings. Raises ValueError."""
    if settings.engine_url:
        return {ANY_MODEL: EngineSpec(settings.engine_url, settings.engine_max_in_flight)}
    if settings.engines is None:
        return {}
    return parse_specs(settings.engines, settings.engine_max_in_flight)


def parse_specs(path: Path, default_in_flight: int) -> dict[str, EngineSpec]:
    text = path.read_text()
    data: dict[str, Any] = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{path}: expected a non-empty 'models' table")
    specs: dict[str, EngineSpec] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ValueError(f"{path}: model {name!r} needs a 'url'")
        in_flight = entry.get("max_in_flight", default_in_flight)
        if not isinstance(in_flight, int) or in_flight < 1:
            raise ValueError(f"{path}: model {name!r}: max_in_flight must be an integer >= 1")
        modes = {key: entry.get(key, "auto") for key in ("responses", "messages")}
        for key, mode in modes.items():
            if mode not in RESPONSES_MODES:
                raise ValueError(
                    f"{path}: model {name!r}: {key} must be one of {', '.join(RESPONSES_MODES)}"
                )
        specs[name] = EngineSpec(
            entry["url"].rstrip("/"),
            in_flight,
            entry.get("api_key"),
            modes["responses"],
            modes["messages"],
        )
    return specs


NOOP_URL = "noop://"
"""An engine URL that selects the in-process no-op engine (benchmarks only)."""


def _engine_for(spec: EngineSpec, timeout: float) -> Engine:
    if spec.url.startswith(NOOP_URL):
        return NoopEngine(spec.max_in_flight)
    return HttpEngine(
        spec.url,
        max_in_flight=spec.max_in_flight,
        timeout=timeout,
        api_key=spec.api_key,
        responses=spec.responses,
        messages=spec.messages,
    )


class EngineRegistry:
    """Engines by model; owns their clients."""

    def __init__(self, engines: dict[str, Engine]) -> None:
        self._by_model = engines
        unique: dict[int, Engine] = {id(e): e for e in engines.values()}
        self.engines: list[Engine] = list(unique.values())

    @classmethod
    def from_specs(cls, specs: dict[str, EngineSpec], *, timeout: float) -> EngineRegistry:
        by_url: dict[str, EngineSpec] = {}
        for spec in specs.values():
            known = by_url.get(spec.url)
            if known is None or spec.max_in_flight > known.max_in_flight:
                by_url[spec.url] = spec
        clients: dict[str, Engine] = {url: _engine_for(s, timeout) for url, s in by_url.items()}
        return cls({model: clients[spec.url] for model, spec in specs.items()})

    def for_model(self, model: str) -> Engine | None:
        return self._by_model.get(model) or self._by_model.get(ANY_MODEL)

    async def served_models(self) -> list[str]:
        """Models named in the configuration, plus what a catch-all engine lists."""
        names = {m for m in self._by_model if m != ANY_MODEL}
        catch_all = self._by_model.get(ANY_MODEL)
        if catch_all is not None:
            names.update(await catch_all.models())
        return sorted(names)

    @property
    def total_in_flight(self) -> int:
        return sum(e.max_in_flight for e in self.engines)

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.aclose()
