"""GPU prices per pool and model, and what GPU time costs at them.

Units: prices are per GPU-hour in one currency (a lowercase ISO 4217 code, as OpenAI's
costs API writes it); GPU time is in GPU-seconds (see :mod:`inferbatch.worker.gputime`);
amounts are in the currency. Cost is fixed when the work is folded into the counters
(:func:`inferbatch.db.counters.fold`) at the prices the folding process has then, as a
bill is: a later change of prices changes what later work costs, never what was folded.

Savings against running everything on dedicated capacity, per model:

- spot saved = spot GPU-seconds x (dedicated price - spot price);
- dedup saved = GPU-seconds of the outputs deduplication copied x dedicated price;
- all dedicated = (spot + dedicated + dedup-saved GPU-seconds) x dedicated price, so
  all dedicated = cost + spot saved + dedup saved.

A prices file (``INFERBATCH_PRICES``, TOML or JSON) overrides the pool prices per model::

    [models."llama-3.1-70b-instruct"]
    spot = 2.4          # per GPU-hour; a pool left out keeps the default price
    dedicated = 8.0
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

PricedPool = Literal["spot", "dedicated"]
POOLS: tuple[PricedPool, ...] = ("spot", "dedicated")
SECONDS_PER_HOUR = 3600.0
DEFAULT_SPOT_PRICE = 0.9
DEFAULT_DEDICATED_PRICE = 3.0
"""Per GPU-hour, in :data:`DEFAULT_CURRENCY`: spot at 0.3 of dedicated, the SLA policy's
default ``spot_price_ratio``."""
DEFAULT_CURRENCY = "usd"
_CURRENCY = re.compile(r"^[a-z]{3}$")


@dataclass(frozen=True, slots=True)
class GpuPrice:
    """Prices of one GPU-hour on each pool."""

    spot: float
    dedicated: float

    def check(self, what: str) -> None:
        """Raise ValueError unless both prices are finite, non-negative and spot is not
        dearer than dedicated (spot is the cheap, preemptible pool)."""
        for pool, value in (("spot", self.spot), ("dedicated", self.dedicated)):
            if not (0.0 <= value < float("inf")):
                raise ValueError(f"{what}: the {pool} price must be a number >= 0, not {value}")
        if self.spot > self.dedicated:
            raise ValueError(
                f"{what}: the spot price ({self.spot}) exceeds the dedicated price "
                f"({self.dedicated})"
            )

    def of(self, pool: str) -> float:
        """The price per GPU-hour on ``pool`` (``spot`` or ``dedicated``)."""
        if pool == "spot":
            return self.spot
        if pool == "dedicated":
            return self.dedicated
        raise ValueError(f"unknown pool {pool!r}")


@dataclass(frozen=True, slots=True)
class PriceTable:
    """The prices in force: a default per pool and overrides per model."""

    currency: str
    default: GpuPrice
    models: Mapping[str, GpuPrice] = field(default_factory=lambda: MappingProxyType({}))

    def price(self, model: str) -> GpuPrice:
        return self.models.get(model, self.default)

    def cost(self, pool: str, model: str, gpu_seconds: float) -> float:
        """What ``gpu_seconds`` of ``model`` on ``pool`` cost, in :attr:`currency`."""
        return gpu_seconds * self.price(model).of(pool) / SECONDS_PER_HOUR

    def as_rows(self) -> list[dict[str, Any]]:
        """The table as rows for SQL (``json_to_recordset``): the default has model null."""
        rows: list[dict[str, Any]] = [
            {"model": None, "spot": self.default.spot, "dedicated": self.default.dedicated}
        ]
        rows += [
            {"model": m, "spot": p.spot, "dedicated": p.dedicated} for m, p in self.models.items()
        ]
        return rows


def check_currency(code: str) -> str:
    """``code`` as a lowercase ISO 4217 code; ValueError for anything else."""
    lowered = code.strip().lower()
    if not _CURRENCY.match(lowered):
        raise ValueError(f"currency {code!r}: use a three-letter ISO 4217 code such as usd")
    return lowered


def load_model_prices(path: Path, default: GpuPrice) -> dict[str, GpuPrice]:
    """Per-model prices from a TOML or JSON file (see the module docstring); a pool a model
    leaves out takes ``default``'s price. Raises ValueError naming what is wrong."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"prices file {path}: {exc.strerror or exc}") from exc
    try:
        data: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"prices file {path}: {exc}") from exc
    models = data.get("models", {}) if isinstance(data, dict) else None
    if not isinstance(models, dict) or set(data) - {"models"}:
        raise ValueError(f'prices file {path}: expected only a table [models."<name>"]')
    out: dict[str, GpuPrice] = {}
    for name, entry in models.items():
        what = f'prices file {path}, models."{name}"'
        if not isinstance(entry, dict) or set(entry) - set(POOLS):
            raise ValueError(f"{what}: expected keys spot and/or dedicated")
        values: dict[str, float] = {}
        for pool in POOLS:
            value = entry.get(pool, default.of(pool))
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{what}: {pool} must be a number")
            values[pool] = float(value)
        price = GpuPrice(**values)
        price.check(what)
        out[str(name)] = price
    return out


DEFAULT_PRICES = PriceTable(DEFAULT_CURRENCY, GpuPrice(DEFAULT_SPOT_PRICE, DEFAULT_DEDICATED_PRICE))
"""The prices of the default settings."""
