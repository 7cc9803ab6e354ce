"""Placing requests on engine replicas: prefix affinity, free slots, health, discovery."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from inferbatch.engines.client import EngineResponse
from inferbatch.engines.limiter import FixedLimit
from inferbatch.engines.replicas import Replica, ReplicaSet, rendezvous, with_address
from inferbatch.scheduler.prefix import prefix_key
from inferbatch.worker.gputime import ShareClock

pytestmark = pytest.mark.unit


class Named:
    def __init__(self, name: str, max_in_flight: int = 4) -> None:
        self.name = name
        self.max_in_flight = max_in_flight
        self.closed = False

    async def call(self, url: str, body: bytes) -> EngineResponse:
        return EngineResponse(200, {"from": self.name}, None, None, 0.0)

    async def models(self) -> list[str]:
        return ["m"]

    async def aclose(self) -> None:
        self.closed = True


def _set(*names: str, limit: int = 4, clock: list[float] | None = None) -> ReplicaSet:
    now = clock if clock is not None else [0.0]
    replicas = [Replica(Named(n), FixedLimit(limit)) for n in names]
    return ReplicaSet("e", replicas, max_in_flight=limit, clock=lambda: now[0])


async def test_requests_without_a_prefix_go_to_the_freest_replica() -> None:
    engines = _set("a", "b", "c")
    placed = [await engines.acquire(i, 0, []) for i in range(9)]
    assert Counter(r.name for r in placed if r) == {"a": 3, "b": 3, "c": 3}


async def test_a_prefix_goes_to_one_replica_in_every_process_and_spills_over_when_full() -> None:
    engines = _set("a", "b", "c")
    key = prefix_key("m", {"messages": [{"role": "system", "content": "x" * 600}, {"c": 1}]})
    ranked = sorted(["a", "b", "c"], key=lambda n: rendezvous(key, n), reverse=True)
    placed = [await engines.acquire(i, key, []) for i in range(6)]
    assert [r.name for r in placed if r] == [ranked[0]] * 4 + [ranked[1]] * 2


async def test_a_full_set_waits_for_a_release() -> None:
    engines = _set("a", limit=1)
    first = await engines.acquire(1, 0, [])
    assert first is not None
    waiting = asyncio.create_task(engines.acquire(2, 0, []))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await engines.release(first, 1, 0.1)
    assert await asyncio.wait_for(waiting, 1.0) is first


async def test_a_down_replica_gets_no_work_then_one_probe_at_a_time() -> None:
    clock = [100.0]
    engines = _set("a", "b", clock=clock)
    a, b = engines.replicas
    engines.mark_down(a)
    assert engines.capacity() == 4
    placed = [await engines.acquire(i, 0, []) for i in range(4)]
    assert {r.name for r in placed if r} == {"b"}
    clock[0] += 1.0  # the pause is over: one request goes through as a probe
    assert await engines.acquire(10, 0, []) is a
    waiting = asyncio.create_task(engines.acquire(11, 0, [b]))  # a probes, b was tried
    await asyncio.sleep(0.05)
    assert not waiting.done()
    engines.mark_up(a)  # the probe succeeded: a takes work again
    await engines.release(a, 10, 0.1)
    assert await asyncio.wait_for(waiting, 1.0) is a
    assert engines.capacity() == 8


async def test_every_replica_down_or_tried_gives_none_at_once() -> None:
    engines = _set("a", "b")
    a, b = engines.replicas
    engines.mark_down(a)
    assert await engines.acquire(1, 0, [b]) is None
    engines.mark_down(b)
    assert await engines.acquire(2, 0, []) is None
    assert 0 < engines.down_for() <= 0.25


async def test_discovery_adds_and_removes_replicas_by_address() -> None:
    answers = [["10.0.0.1", "10.0.0.2"], ["10.0.0.2", "fd00::3"]]

    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("vllm.ns.svc", 8000)
        return answers.pop(0)

    def make(url: str) -> Replica:
        return Replica(Named(url), FixedLimit(2), ShareClock())

    engines = ReplicaSet(
        "e", [], max_in_flight=2, discover_url="http://vllm.ns.svc:8000/v1", make=make,
        resolver=resolver,
    )  # fmt: skip
    held = await engines.acquire(1, 0, [])  # the first lookup is awaited
    assert held is not None and held.name == "http://10.0.0.1:8000/v1"
    assert [r.name for r in engines.replicas] == [
        "http://10.0.0.1:8000/v1",
        "http://10.0.0.2:8000/v1",
    ]
    await engines.discover()
    names = {r.name: r.removed for r in engines.replicas}
    assert names == {
        "http://10.0.0.1:8000/v1": True,  # gone from DNS, still holds a request
        "http://10.0.0.2:8000/v1": False,
        "http://[fd00::3]:8000/v1": False,
    }
    await engines.release(held, 1, 0.1)  # its last request ended: closed and dropped
    assert held.engine.closed  # type: ignore[attr-defined]
    assert len(engines.replicas) == 2 and engines.live == 2


def test_with_address_keeps_scheme_port_and_path() -> None:
    assert with_address("https://svc:8443/v1", "10.1.2.3") == "https://10.1.2.3:8443/v1"
    assert with_address("http://svc/v1", "fd00::1") == "http://[fd00::1]/v1"


async def test_resolving_localhost_gives_addresses() -> None:
    from inferbatch.engines.replicas import resolve_all

    assert "127.0.0.1" in await resolve_all("localhost", 80)


def test_gpu_time_is_split_among_requests_in_flight() -> None:
    now = [0.0]
    clock = ShareClock(gpus=2.0, clock=lambda: now[0])
    clock.start(1)
    now[0] = 1.0
    clock.start(2)  # 1 s alone, then 2 s shared
    now[0] = 3.0
    first = clock.stop(1)
    now[0] = 4.0
    second = clock.stop(2)
    assert first == pytest.approx(2.0 * (1.0 + 1.0))
    assert second == pytest.approx(2.0 * (1.0 + 1.0))
    assert first + second == pytest.approx(2.0 * 4.0)  # the busy time, exactly once
    assert clock.stop(99) == 0.0
