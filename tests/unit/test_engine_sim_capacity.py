"""engine-sim's capacity model: overload 429s, batch slowdown, live and scheduled limits."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferbatch.engines.sim import (
    SimConfig,
    _Gate,
    create_app,
    parse_capacity_schedule,
    updated_config,
)

pytestmark = pytest.mark.unit

CHAT = "/v1/chat/completions"
SRC_DIR = Path(__file__).resolve().parents[2] / "src"


class HeldSleep:
    """The app's sleep hook: records each service time and holds it until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, asyncio.Event]] = []
        self.opened = False

    async def __call__(self, seconds: float) -> None:
        event = asyncio.Event()
        self.calls.append((seconds, event))
        if not self.opened:
            await event.wait()

    @property
    def seconds(self) -> list[float]:
        return [seconds for seconds, _ in self.calls]

    def release(self, index: int | None = None) -> None:
        """Release call ``index``, or (None) every call, now and later."""
        if index is None:
            self.opened = True
        for i, (_, event) in enumerate(self.calls):
            if index is None or i == index:
                event.set()

    async def called(self, n: int) -> None:
        """Wait until ``n`` service times have been recorded (no timing involved)."""
        for _ in range(5000):
            if len(self.calls) >= n:
                return
            await asyncio.sleep(0.001)
        pytest.fail(f"only {len(self.calls)} of {n} requests reached their service time")


@asynccontextmanager
async def _sim(config: SimConfig, sleep: HeldSleep) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(config, sleep=sleep))
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield client


def _chat(i: int = 0) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 4}


async def _stats(client: httpx.AsyncClient) -> dict[str, Any]:
    stats: dict[str, Any] = (await client.get("/sim/stats")).json()
    return stats


async def _until(client: httpx.AsyncClient, **expected: int) -> dict[str, Any]:
    """Poll /sim/stats until the named gauges have the expected values (no timing involved)."""
    for _ in range(5000):
        stats = await _stats(client)
        if all(stats[key] == value for key, value in expected.items()):
            return stats
        await asyncio.sleep(0.001)
    pytest.fail(f"engine-sim never reached {expected}: {stats}")


def _send(client: httpx.AsyncClient, i: int = 0) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(client.post(CHAT, json=_chat(i)))


# --- overload bound ---------------------------------------------------------------------------


async def test_arrival_beyond_max_queue_gets_429_at_once() -> None:
    sleep = HeldSleep()
    async with _sim(SimConfig(max_concurrency=1, max_queue=1), sleep) as client:
        running = _send(client, 0)
        await _until(client, running=1)
        waiting = _send(client, 1)  # one may wait: not refused
        await _until(client, running=1, waiting=1)
        refused = await client.post(CHAT, json=_chat(2))
        stats = await _stats(client)
        sleep_calls_before = len(sleep.calls)
        sleep.release()
        assert [(await t).status_code for t in (running, waiting)] == [200, 200]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "overloaded" in error["message"]
    assert (stats["rate_limited"], stats["running"], stats["waiting"]) == (1, 1, 1)
    assert sleep_calls_before == 1  # the refused request never took a slot


async def test_max_queue_zero_refuses_only_when_no_slot_is_free() -> None:
    sleep = HeldSleep()
    async with _sim(SimConfig(max_concurrency=2, max_queue=0), sleep) as client:
        first, second = _send(client, 0), _send(client, 1)
        await _until(client, running=2)
        refused = await client.post(CHAT, json=_chat(2))
        sleep.release()
        assert [(await t).status_code for t in (first, second)] == [200, 200]
        assert refused.status_code == 429
        assert (await _stats(client))["rate_limited"] == 1


async def test_no_bound_queues_everything() -> None:
    sleep = HeldSleep()
    async with _sim(SimConfig(max_concurrency=1), sleep) as client:
        tasks = [_send(client, i) for i in range(5)]
        stats = await _until(client, running=1, waiting=4)
        sleep.release()
        assert {(await t).status_code for t in tasks} == {200}
    assert stats["rate_limited"] == 0


async def test_injected_rate_limits_are_counted_as_rate_limited() -> None:
    async with _sim(SimConfig(rate_limit_rate=1.0), HeldSleep()) as client:
        for i in range(3):
            assert (await client.post(CHAT, json=_chat(i))).status_code == 429
        stats = await _stats(client)
    assert stats["rate_limited"] == stats["faults"]["rate_limit"] == 3


# --- batch slowdown ---------------------------------------------------------------------------


def test_service_time_grows_with_running_sequences() -> None:
    config = SimConfig(max_concurrency=4, batch_slowdown=2.0, decode_tokens_per_s=100.0)
    times = [config.service_time_s(0, 10, running=n) for n in (1, 2, 3, 4)]
    assert times == pytest.approx([0.1, 0.15, 0.2, 0.25])  # 10/100 * (1 + 2 * (n - 1) / 4)
    flat = SimConfig(max_concurrency=4, decode_tokens_per_s=100.0)
    assert {flat.service_time_s(0, 10, running=n) for n in (1, 4)} == {0.1}
    assert config.service_time_s(50, 10, cached_tokens=50) == pytest.approx(0.1)


@pytest.mark.parametrize(("slowdown", "increasing"), [(1.0, True), (0.0, False)])
async def test_requests_admitted_into_a_fuller_batch_are_served_slower(
    slowdown: float, increasing: bool
) -> None:
    config = SimConfig(
        max_concurrency=4,
        batch_slowdown=slowdown,
        decode_tokens_per_s=100.0,
        prefill_tokens_per_s=1e12,
    )
    sleep = HeldSleep()
    async with _sim(config, sleep) as client:
        tasks = []
        for i in range(4):  # admitted one after the other: running is 1, 2, 3, 4
            tasks.append(_send(client, i))
            await _until(client, running=i + 1)
        sleep.release()
        await asyncio.gather(*tasks)
    expected = [config.service_time_s(4, 4, running=n) for n in (1, 2, 3, 4)]
    assert sleep.seconds == expected
    assert (sleep.seconds == sorted(set(sleep.seconds))) is increasing


# --- live config ------------------------------------------------------------------------------


async def test_config_shrink_lets_running_finish_and_grow_admits_at_once() -> None:
    sleep = HeldSleep()
    async with _sim(SimConfig(max_concurrency=2), sleep) as client:
        a, b = _send(client, 0), _send(client, 1)
        await _until(client, running=2)
        resp = await client.post("/sim/config", json={"max_concurrency": 1})
        assert resp.status_code == 200 and resp.json()["max_concurrency"] == 1
        c = _send(client, 2)
        await _until(client, running=2, waiting=1, max_concurrency=1)  # nobody was cut off
        sleep.release(0)
        assert (await a).status_code == 200
        await _until(client, running=1, waiting=1)  # 1 running is not below the new limit
        sleep.release(1)
        assert (await b).status_code == 200
        await _until(client, running=1, waiting=0)  # now c is admitted
        await sleep.called(3)

        resp = await client.post("/sim/config", json={"max_concurrency": 3})
        d, e = _send(client, 3), _send(client, 4)
        await _until(client, running=3, waiting=0, max_concurrency=3)
        sleep.release()
        assert [(await t).status_code for t in (c, d, e)] == [200] * 3
        config = (await client.get("/sim/config")).json()
    assert config["max_concurrency"] == 3


async def test_config_grow_admits_waiting_requests() -> None:
    sleep = HeldSleep()
    async with _sim(SimConfig(max_concurrency=1), sleep) as client:
        tasks = [_send(client, i) for i in range(3)]
        await _until(client, running=1, waiting=2)
        await client.post("/sim/config", json={"max_concurrency": 3})
        await _until(client, running=3, waiting=0)
        sleep.release()
        await asyncio.gather(*tasks)


async def test_config_changes_speed_and_queue_bound_live() -> None:
    sleep = HeldSleep()
    config = SimConfig(max_concurrency=1, decode_tokens_per_s=100.0, prefill_tokens_per_s=1e12)
    async with _sim(config, sleep) as client:
        changes = {"decode_tokens_per_s": 50, "prefill_tokens_per_s": 1e12, "max_queue": 0}
        resp = await client.post("/sim/config", json=changes)
        assert resp.json()["decode_tokens_per_s"] == 50.0
        first = _send(client, 0)
        await _until(client, running=1)
        assert (await client.post(CHAT, json=_chat(1))).status_code == 429
        await client.post("/sim/config", json={"max_queue": None})
        second = _send(client, 2)
        await _until(client, waiting=1)
        sleep.release()
        assert [(await t).status_code for t in (first, second)] == [200, 200]
    live = SimConfig(max_concurrency=1, decode_tokens_per_s=50.0, prefill_tokens_per_s=1e12)
    assert sleep.seconds[0] == live.service_time_s(4, 4)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b"{}",
        b'{"nope": 1}',
        b'{"max_concurrency": 0}',
        b'{"max_concurrency": 1.5}',
        b'{"max_concurrency": true}',
        b'{"max_concurrency": "8"}',
        b'{"decode_tokens_per_s": -1}',
        b'{"max_queue": -1}',
        b'{"error_rate": 2}',
        b'{"capacity_schedule": [[0, 1]]}',
    ],
)
async def test_bad_config_is_refused_and_changes_nothing(body: bytes) -> None:
    async with _sim(SimConfig(max_concurrency=5), HeldSleep()) as client:
        resp = await client.post("/sim/config", content=body)
        config = (await client.get("/sim/config")).json()
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert resp.json()["error"]["message"]
    assert config["max_concurrency"] == 5 and config["max_queue"] is None


def test_updated_config_converts_and_validates() -> None:
    base = SimConfig()
    new = updated_config(base, {"decode_tokens_per_s": 10, "max_queue": 3, "seed": None})
    assert (new.decode_tokens_per_s, new.max_queue) == (10.0, 3)
    assert isinstance(new.decode_tokens_per_s, float)
    assert base.max_queue is None  # a new object; the old one is unchanged
    with pytest.raises(ValueError, match="batch_slowdown"):
        updated_config(base, {"batch_slowdown": -0.5})


# --- capacity schedule ------------------------------------------------------------------------


def test_parse_capacity_schedule() -> None:
    assert parse_capacity_schedule("0:64,60:32,120:64") == ((0.0, 64), (60.0, 32), (120.0, 64))
    assert parse_capacity_schedule(" 30:2 , 0.5:8") == ((0.5, 8), (30.0, 2))
    for bad in ("", "0", "0:", "x:4", "0:4.5", "-1:4", "0:0", "inf:3", "0:4,,1:2"):
        with pytest.raises(ValueError):
            parse_capacity_schedule(bad)
    with pytest.raises(ValueError):
        SimConfig(capacity_schedule=((0.0, 0),)).validate()


async def test_schedule_is_applied_by_the_lifespan() -> None:
    config = SimConfig(max_concurrency=8, capacity_schedule=((0.0, 4), (0.05, 2)))
    app = create_app(config, sleep=HeldSleep())
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://sim") as client,
        app.router.lifespan_context(app),
    ):
        await _until(client, max_concurrency=2)
        assert (await client.get("/sim/config")).json()["max_concurrency"] == 2


async def test_without_lifespan_no_schedule_runs() -> None:
    config = SimConfig(max_concurrency=8, capacity_schedule=((0.0, 4),))
    async with _sim(config, HeldSleep()) as client:
        await asyncio.sleep(0.01)
        assert (await _stats(client))["max_concurrency"] == 8


# --- the gate ---------------------------------------------------------------------------------


async def test_gate_cancelled_waiters_do_not_leak_slots() -> None:
    gate = _Gate(1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert (gate.running, gate.waiting) == (1, 1)
    waiter.cancel()  # cancelled while waiting
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (gate.running, gate.waiting) == (1, 0)

    granted = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # hands the slot to ``granted`` ...
    granted.cancel()  # ... which is cancelled before it runs: the slot must come back
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert (gate.running, gate.waiting) == (0, 0)
    await gate.acquire()
    assert gate.running == 1


# --- the real command -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def engine_sim() -> Iterator[Callable[..., str]]:
    """Start ``inferbatch engine-sim <args>``; returns its URL once /health answers."""
    procs: list[subprocess.Popen[bytes]] = []
    pythonpath = os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}

    def start(*args: str) -> str:
        port = _free_port()
        command = [sys.executable, "-m", "inferbatch", "engine-sim", "--port", str(port), *args]
        procs.append(subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and procs[-1].poll() is None:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    return url
            except httpx.TransportError:
                time.sleep(0.05)
        pytest.fail("engine-sim did not start")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.e2e
def test_cli_schedule_halves_capacity_mid_run(engine_sim: Callable[..., str]) -> None:
    url = engine_sim(
        "--max-concurrency", "8", "--capacity-schedule", "0:8,0.5:4", "--max-queue", "2",
        "--prefix-cache-tokens", "256", "--prefix-block-tokens", "4", "--batch-slowdown", "0.5",
    )  # fmt: skip
    for _ in range(400):
        stats = httpx.get(f"{url}/sim/stats").json()
        if stats["max_concurrency"] == 4:
            break
        time.sleep(0.05)
    assert stats["max_concurrency"] == 4
    config = httpx.get(f"{url}/sim/config").json()
    assert (config["max_queue"], config["prefix_cache_tokens"], config["batch_slowdown"]) == (
        2,
        256,
        0.5,
    )
    body = {"model": "m", "prompt": "a b c d e", "max_tokens": 1}
    httpx.post(f"{url}/v1/completions", json=body)
    usage = httpx.post(f"{url}/v1/completions", json=body).json()["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 4}


@pytest.mark.e2e
def test_cli_refuses_a_malformed_schedule() -> None:
    pythonpath = os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "inferbatch", "engine-sim", "--capacity-schedule", "0:x"]
    done = subprocess.run(
        command, env={**os.environ, "PYTHONPATH": pythonpath}, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert b"capacity-schedule" in done.stderr
