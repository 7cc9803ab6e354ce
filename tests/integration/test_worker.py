"""The worker loop in-process, against a real database and an in-process engine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db.types import Pool
from inferbatch.engines.client import EngineResponse
from inferbatch.engines.registry import ANY_MODEL, EngineRegistry
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.worker.worker import PREFETCH_MAX, Worker, WorkerConfig
from tests.helpers import chat_file
from tests.integration.fixtures import REQUESTS_JOINED, make_batch, make_user, utcnow

pytestmark = pytest.mark.integration


class CountingEngine:
    """Answers 200 at once and records the bodies it saw and the peak concurrency."""

    name = "counting"

    def __init__(self, max_in_flight: int = 8, delay: float = 0.0) -> None:
        self.max_in_flight = max_in_flight
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self.in_flight = self.peak = 0

    async def call(self, url: str, body: bytes) -> EngineResponse:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            self.calls.append(json.loads(body))
            usage = {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
            return EngineResponse(200, {"ok": True, "usage": usage}, "rid", None, 0.0)
        finally:
            self.in_flight -= 1

    async def models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        pass


def _config(pool: str, takes_spot: bool = False) -> WorkerConfig:
    return WorkerConfig(
        pool=pool,
        lease_seconds=30,
        max_attempts=3,
        retry_base_seconds=0.01,
        retry_max_seconds=0.1,
        drain_seconds=1,
        poll_seconds=0.05,
        flush_seconds=0.01,
        takes_spot=takes_spot,
    )


async def _run_until(pool: Pool, worker: Worker, done: int, within: float = 20) -> int:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    count = await _completed_within(pool, done, within)
    stop.set()
    await task
    return count


async def _completed_within(pool: Pool, n: int, seconds: float) -> int:
    """Completed requests once ``n`` are, or when ``seconds`` have passed."""
    count = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while count < n:
                await asyncio.sleep(0.05)
                async with pool.connection() as conn:
                    cur = await conn.execute(
                        "SELECT count(*) AS n FROM requests WHERE status = 'completed'"
                    )
                    row = await cur.fetchone()
                count = row["n"] if row else 0
    return count


async def _batch(pool: Pool, tmp_path: Path, n: int) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    await make_batch(pool, blobs, user, chat_file(n))
    await ingest_next(pool, blobs, max_requests=10_000, now=utcnow)


async def test_worker_drains_the_queue_keeping_the_engine_full(pool: Pool, tmp_path: Path) -> None:
    await _batch(pool, tmp_path, 300)
    engine = CountingEngine(max_in_flight=16, delay=0.01)
    worker = Worker(_config("spot"), pool, EngineRegistry({ANY_MODEL: engine}))
    assert await _run_until(pool, worker, 300) == 300
    assert len(engine.calls) == 300
    assert engine.peak == 16


async def test_an_idle_worker_wakes_on_a_queue_notification(pool: Pool, tmp_path: Path) -> None:
    """With a poll interval of ten minutes (a first idle wait of 75 s), only the NOTIFY sent
    when the batch is queued can get an idle worker to claim it within the wait below."""
    engine = CountingEngine()
    config = dataclasses.replace(_config("spot"), poll_seconds=600.0)
    worker = Worker(config, pool, EngineRegistry({ANY_MODEL: engine}))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(1.0)  # claims nothing and backs off to a long idle wait
        await _batch(pool, tmp_path, 5)
        assert await _completed_within(pool, 5, 20.0) == 5
    finally:
        stop.set()
        await task
    assert len(engine.calls) == 5


async def test_dedicated_worker_takes_spot_work_only_when_allowed(
    pool: Pool, tmp_path: Path
) -> None:
    await _batch(pool, tmp_path, 20)
    engine = CountingEngine()
    strict = Worker(_config("dedicated"), pool, EngineRegistry({ANY_MODEL: engine}))
    assert await _run_until(pool, strict, 20, within=0.5) == 0
    helpful = Worker(
        _config("dedicated", takes_spot=True), pool, EngineRegistry({ANY_MODEL: engine})
    )
    assert await _run_until(pool, helpful, 20) == 20
    assert len(engine.calls) == 20


async def test_unknown_model_fails_the_request_without_an_engine_call(
    pool: Pool, tmp_path: Path
) -> None:
    await _batch(pool, tmp_path, 3)  # model "sim-model"
    engine = CountingEngine()
    worker = Worker(_config("spot"), pool, EngineRegistry({"other-model": engine}))
    await _run_until(pool, worker, 1, within=1)
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT status, error->>'code' AS code FROM {REQUESTS_JOINED}")
        rows = await cur.fetchall()
    assert rows == [{"status": "failed", "code": "model_not_found"}] * 3
    assert engine.calls == []


async def test_the_ready_buffer_follows_the_completion_rate(pool: Pool) -> None:
    worker = Worker(
        _config("spot"), pool, EngineRegistry({ANY_MODEL: CountingEngine(max_in_flight=32)})
    )
    claimer = worker.claimer
    assert claimer.prefetch == claimer.min_prefetch == 16
    for _ in range(20):  # 1,000 finished/s: 100 ms of it
        claimer.adapt_prefetch(100, 0.1)
    assert 99 <= claimer.prefetch <= 100
    for _ in range(20):  # capped: a claim carries every body it takes
        claimer.adapt_prefetch(1_000_000, 0.1)
    assert claimer.prefetch == PREFETCH_MAX
    for _ in range(20):  # 16 finished/s: back to the floor, leases are not held idle
        claimer.adapt_prefetch(16, 1.0)
    assert claimer.prefetch == 16
