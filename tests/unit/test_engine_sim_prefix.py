"""engine-sim's prefix cache: chained block hashes, cached tokens skip prefill, LRU eviction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from inferbatch.engines.sim import PrefixCache, SimConfig, create_app
from inferbatch.engines.usage import usage_of

pytestmark = pytest.mark.unit

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


class RecordingSleep:
    """The app's sleep hook: records each service time (seconds) and returns at once."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


@asynccontextmanager
async def _sim(config: SimConfig, sleep: RecordingSleep) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(config, sleep=sleep))
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield client


def _cache_config(**extra: Any) -> SimConfig:
    # prefill is the only cost, so a service time says how many prompt tokens were computed
    fields: dict[str, Any] = {
        "prefix_block_tokens": 4,
        "prefix_cache_tokens": 1024,
        "prefill_tokens_per_s": 100.0,
        "decode_tokens_per_s": 1e12,
    }
    return SimConfig(**{**fields, **extra})


async def _complete(client: httpx.AsyncClient, prompt: str) -> int:
    """Cached tokens of one completion of ``prompt``."""
    resp = await client.post(COMPLETIONS, json={"model": "m", "prompt": prompt, "max_tokens": 1})
    assert resp.status_code == 200
    cached: int = resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    return cached


async def test_repeated_chat_prefix_is_cached_and_costs_no_prefill() -> None:
    system = {"role": "system", "content": " ".join(f"rule{i}" for i in range(20))}

    def chat(question: str) -> dict[str, Any]:
        messages = [system, {"role": "user", "content": question}]
        return {"model": "m", "messages": messages, "max_tokens": 2}

    sleep = RecordingSleep()
    config = _cache_config()
    async with _sim(config, sleep) as client:
        first = (await client.post(CHAT, json=chat("question one"))).json()
        second = (await client.post(CHAT, json=chat("question two"))).json()
        stats = (await client.get("/sim/stats")).json()
    # each prompt renders to 23 + 5 = 28 tokens; the first 25 are shared, so 6 whole blocks
    assert first["usage"]["prompt_tokens"] == second["usage"]["prompt_tokens"] == 28
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": 24}
    assert usage_of(second).cached == 24  # what the worker records from an engine's answer
    assert sleep.seconds == [
        config.service_time_s(28, 2, cached_tokens=0),
        config.service_time_s(28, 2, cached_tokens=24),
    ]
    assert sleep.seconds[1] < sleep.seconds[0]
    assert stats["prefix_cache_hit_tokens"] == 24
    assert stats["prefix_cache_miss_tokens"] == 28 + 28 - 24
    assert stats["prefix_cache_used_tokens"] == (6 + 1 + 1) * 4  # shared 6, one tail block each


async def test_identical_prompt_still_computes_its_last_token() -> None:
    async with _sim(_cache_config(), RecordingSleep()) as client:
        assert await _complete(client, "a b c d e f g h") == 0
        # both blocks are cached, but the last token is always computed: the last block is not
        assert await _complete(client, "a b c d e f g h") == 4
        assert await _complete(client, "a b c d e f g h i") == 8


async def test_same_block_behind_another_prefix_does_not_match() -> None:
    async with _sim(_cache_config(), RecordingSleep()) as client:
        assert await _complete(client, "x x x x y y y y z") == 0
        assert await _complete(client, "w w w w y y y y z") == 0  # block 2's hash chains block 1
        assert await _complete(client, "x x x x y y y y q") == 8


async def test_third_prefix_evicts_the_least_recently_used() -> None:
    first, second, third = "a a a a end", "b b b b end", "c c c c end"
    async with _sim(_cache_config(prefix_cache_tokens=8), RecordingSleep()) as client:
        for prompt in (first, second, third):  # two blocks fit: the third evicts the first
            assert await _complete(client, prompt) == 0
        assert await _complete(client, second) == 4
        assert await _complete(client, first) == 0  # evicted; re-entering evicts third
        assert await _complete(client, second) == 4
        assert await _complete(client, third) == 0


async def test_a_hit_refreshes_recency() -> None:
    first, second, third = "a a a a end", "b b b b end", "c c c c end"
    async with _sim(_cache_config(prefix_cache_tokens=8), RecordingSleep()) as client:
        assert await _complete(client, first) == 0
        assert await _complete(client, second) == 0
        assert await _complete(client, first) == 4  # first is now the most recent
        assert await _complete(client, third) == 0  # so second goes
        assert await _complete(client, first) == 4
        assert await _complete(client, second) == 0


def test_pressure_evicts_a_prefix_tail_before_its_head() -> None:
    cache = PrefixCache(capacity_tokens=8, block_tokens=2)
    long = [f"t{i}" for i in range(13)]  # 6 full blocks into a cache of 4
    assert cache.admit(long) == 0
    assert cache.used_tokens == 8
    assert cache.admit(long) == 8  # the leading 4 blocks stayed, so the prefix still hits


async def test_multi_prompt_completion_sums_cached_tokens() -> None:
    async with _sim(_cache_config(), RecordingSleep()) as client:
        await _complete(client, "a b c d e")
        body = {"model": "m", "prompt": ["a b c d x", [1, 2, 3, 4, 5], "a b c d y"]}
        usage = (await client.post(COMPLETIONS, json=body)).json()["usage"]
    assert usage["prompt_tokens"] == 15
    assert usage["prompt_tokens_details"] == {"cached_tokens": 8}


async def test_cache_off_reports_no_details_and_counts_misses() -> None:
    sleep = RecordingSleep()
    config = _cache_config(prefix_cache_tokens=0)
    async with _sim(config, sleep) as client:
        for _ in range(2):
            resp = await client.post(COMPLETIONS, json={"model": "m", "prompt": "a b c d e f"})
            assert "prompt_tokens_details" not in resp.json()["usage"]
        stats = (await client.get("/sim/stats")).json()
    assert sleep.seconds == [config.service_time_s(6, 16)] * 2
    assert (stats["prefix_cache_hit_tokens"], stats["prefix_cache_miss_tokens"]) == (0, 12)
    assert stats["prefix_cache_used_tokens"] == 0


async def test_reset_with_cache_empties_it() -> None:
    async with _sim(_cache_config(), RecordingSleep()) as client:
        await _complete(client, "a b c d e")
        await client.post("/sim/reset")
        assert await _complete(client, "a b c d e") == 4  # counters reset, cache kept
        stats = (await client.post("/sim/reset?cache=1")).json()
        assert stats["prefix_cache_used_tokens"] == 0
        assert stats["prefix_cache_hit_tokens"] == 0
        assert await _complete(client, "a b c d e") == 0


async def test_live_cache_resize_and_block_change() -> None:
    async with _sim(_cache_config(), RecordingSleep()) as client:
        await _complete(client, "a b c d e")
        await _complete(client, "b b b b e")
        assert (await client.post("/sim/config", json={"prefix_cache_tokens": 4})).is_success
        assert await _complete(client, "b b b b e") == 4  # the most recent block survived
        assert await _complete(client, "a b c d e") == 0
        await client.post("/sim/config", json={"prefix_cache_tokens": 64})
        assert await _complete(client, "a b c d e") == 4
        await client.post("/sim/config", json={"prefix_block_tokens": 2})
        assert await _complete(client, "a b c d e") == 0  # other blocks: the cache starts empty
