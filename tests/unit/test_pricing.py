"""GPU prices: the settings agree with the policy's price ratio, per-model prices come from
a file checked at start, and the worker's cost counter prices GPU time with them."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from inferbatch.config import Settings
from inferbatch.metrics import WorkerMetrics
from inferbatch.pricing import GpuPrice

pytestmark = pytest.mark.unit


def test_the_default_prices_are_the_policy_s_default_ratio() -> None:
    s = Settings()
    table = s.price_table
    assert (table.currency, table.default) == ("usd", GpuPrice(spot=0.9, dedicated=3.0))
    assert s.spot_price_ratio == pytest.approx(0.3)


def test_prices_set_the_policy_ratio_and_a_ratio_alone_sets_the_spot_price() -> None:
    assert Settings(gpu_hour_price_spot=1.0, gpu_hour_price_dedicated=4.0).spot_price_ratio == 0.25
    legacy = Settings(spot_price_ratio=0.5)
    assert legacy.price_table.default == GpuPrice(spot=1.5, dedicated=3.0)
    agreeing = Settings(spot_price_ratio=0.5, gpu_hour_price_spot=2.0, gpu_hour_price_dedicated=4)
    assert agreeing.spot_price_ratio == 0.5


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"spot_price_ratio": 0.5, "gpu_hour_price_spot": 1.0}, "disagrees"),
        ({"gpu_hour_price_spot": 5.0}, "exceeds the dedicated price"),
        ({"gpu_hour_price_spot": 0.0}, "above 0"),
        ({"currency": "dollars"}, "ISO 4217"),
    ],
)
def test_inconsistent_prices_are_refused_at_start(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_a_prices_file_overrides_per_model(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('[models."big"]\nspot = 2.0\ndedicated = 8\n\n[models."half"]\ndedicated = 6\n')
    table = Settings(prices=path, currency="EUR").price_table
    assert table.currency == "eur"
    assert table.price("big") == GpuPrice(spot=2.0, dedicated=8.0)
    assert table.price("half") == GpuPrice(spot=0.9, dedicated=6.0)  # spot left out: default
    assert table.price("other") == table.default
    assert table.cost("dedicated", "big", 1800) == 4.0
    assert table.cost("spot", "other", 3600) == 0.9
    assert table.as_rows()[0] == {"model": None, "spot": 0.9, "dedicated": 3.0}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[models."x"]\nspot = "cheap"\n', "must be a number"),
        ('[models."x"]\nspot = 9.0\n', "exceeds"),
        ('[models."x"]\nspot = -1\n', ">= 0"),
        ('[models."x"]\ngpu = 1\n', "spot and/or dedicated"),
        ("[other]\n", "only a table"),
        ("not toml = = 1", "prices file"),
    ],
)
def test_a_bad_prices_file_is_refused_naming_what_is_wrong(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(ValidationError, match=words):
        Settings(prices=path)


def test_a_missing_prices_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="prices file"):
        Settings(prices=tmp_path / "absent.json")


def test_the_worker_counts_gpu_time_and_its_cost_by_pool_and_model(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text('{"models": {"big": {"spot": 2.0, "dedicated": 8.0}}}')
    registry = CollectorRegistry()
    m = WorkerMetrics(registry, Settings(prices=path).price_table)
    m.gpu("dedicated", "big", 900.0)
    m.gpu("dedicated", "big", 900.0)
    m.gpu("spot", "small", 0.0)  # a series from the first outcome on
    labels = {"pool": "dedicated", "model": "big"}
    assert registry.get_sample_value("inferbatch_gpu_seconds_total", labels) == 1800.0
    cost = registry.get_sample_value("inferbatch_gpu_cost_total", labels | {"currency": "usd"})
    assert cost == 4.0
    spot = {"pool": "spot", "model": "small", "currency": "usd"}
    assert registry.get_sample_value("inferbatch_gpu_cost_total", spot) == 0.0
