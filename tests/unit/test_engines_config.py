"""The model -> engine map from settings and engines files."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferbatch.config import Settings
from inferbatch.engines.registry import ANY_MODEL, EngineRegistry, EngineSpec, load_specs

pytestmark = pytest.mark.unit


def test_engine_url_serves_every_model() -> None:
    specs = load_specs(Settings(engine_url="http://gpu:8000/v1", engine_max_in_flight=7))
    assert specs == {ANY_MODEL: EngineSpec(("http://gpu:8000/v1",), 7)}


def test_engine_url_may_list_replicas() -> None:
    specs = load_specs(Settings(engine_url="http://a:8000/v1, http://b:8000/v1/"))
    assert specs[ANY_MODEL].urls == ("http://a:8000/v1", "http://b:8000/v1")
    registry = EngineRegistry.from_specs(specs, timeout=5)
    engines = registry.for_model("m")
    assert engines is not None and [r.name for r in engines.replicas] == list(specs[ANY_MODEL].urls)
    assert registry.total_in_flight == 2 * Settings().engine_max_in_flight


def test_engines_file_maps_models_and_shares_engines_by_url(tmp_path: Path) -> None:
    path = tmp_path / "engines.toml"
    path.write_text(
        '[models."a"]\nurl = "http://one/v1/"\nmax_in_flight = 4\n'
        '[models."b"]\nurl = "http://one/v1"\nmax_in_flight = 9\n'
        '[models."*"]\nurl = "http://two/v1"\n'
    )
    specs = load_specs(Settings(engines=path, engine_max_in_flight=3))
    assert specs["a"] == EngineSpec(("http://one/v1",), 4)
    assert specs["*"] == EngineSpec(("http://two/v1",), 3)
    registry = EngineRegistry.from_specs(specs, timeout=5)
    assert registry.for_model("a") is registry.for_model("b")
    assert registry.for_model("a") is not None and registry.for_model("a").max_in_flight == 9  # type: ignore[union-attr]
    assert registry.for_model("other") is registry.for_model("*")
    assert registry.total_in_flight == 12


def test_json_engines_file(tmp_path: Path) -> None:
    path = tmp_path / "engines.json"
    path.write_text('{"models": {"m": {"url": "http://x/v1", "max_in_flight": 2}}}')
    registry = EngineRegistry.from_specs(load_specs(Settings(engines=path)), timeout=5)
    assert registry.for_model("m") is not None and registry.for_model("zzz") is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        '[models."m"]\nmax_in_flight = 2\n',
        '[models."m"]\nurl = "http://x"\nmax_in_flight = 0\n',
        '[models."m"]\nurls = []\n',
        '[models."m"]\nurl = "http://x"\nurls = ["http://y"]\n',
        '[models."m"]\nurls = ["http://x", "http://y"]\ndiscover = "dns"\n',
        '[models."m"]\nurl = "http://x"\ndiscover = "mdns"\n',
        '[models."m"]\nurl = "http://x"\nconcurrency = "static"\n',
        '[models."m"]\nurl = "http://x"\ngpus = 0\n',
        '[models."m"]\nurl = "http://x"\nlatency_tolerance = 1.0\n',
    ],
)
def test_bad_engines_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "engines.toml"
    path.write_text(text)
    with pytest.raises(ValueError):
        load_specs(Settings(engines=path))


def test_engine_url_and_engines_file_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Settings(engine_url="http://x/v1", engines=tmp_path / "e.toml")


def test_engines_file_options(tmp_path: Path) -> None:
    path = tmp_path / "engines.toml"
    path.write_text(
        '[models."a"]\nurls = ["http://one/v1", "http://two/v1"]\nconcurrency = "fixed"\n'
        "gpus = 2\n"
        '[models."b"]\nurl = "http://svc.ns:8000/v1"\ndiscover = "dns"\n'
        "latency_tolerance = 3\n"
    )
    specs = load_specs(Settings(engines=path))
    assert specs["a"].urls == ("http://one/v1", "http://two/v1")
    assert (specs["a"].concurrency, specs["a"].gpus) == ("fixed", 2.0)
    assert (specs["b"].discover, specs["b"].latency_tolerance) == (True, 3.0)
    registry = EngineRegistry.from_specs(specs, timeout=5)
    fixed = registry.for_model("a")
    assert fixed is not None and all(r.limit.limit == 32 for r in fixed.replicas)
    discovered = registry.for_model("b")
    assert discovered is not None and discovered.replicas == []  # resolved on first use
