"""Shared set-up for the engine benchmarks: engines as processes, one batch through a real
worker process, its throughput read from the recorded request times."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg

from bench.common import create_batch, fresh_database
from bench.queue import _processes, _wait_count
from inferbatch.blobstore import LocalBlobStore
from inferbatch.db.connector import open_pool
from inferbatch.engines.local import free_port
from inferbatch.scheduler.ingest import ingest_next


@contextlib.contextmanager
def engine_sim(*args: str) -> Iterator[str]:
    """An engine-sim process with these options; yields its base URL (no ``/v1``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "inferbatch", "engine-sim", "--port", str(port), *args]
    with _processes([cmd], dict(os.environ)):
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("engine-sim did not start")
            time.sleep(0.1)
        yield url


@dataclass(frozen=True)
class Run:
    n: int
    seconds: float
    """From the first request sent to the last one finished."""
    finished: tuple[float, ...] = ()
    """When each request finished, in seconds after the first was sent, sorted."""
    started_at: float = 0.0
    """When the first request was sent (Unix seconds)."""

    @property
    def rate(self) -> float:
        return self.n / self.seconds


async def _queue(url: str, blobs: LocalBlobStore, lines: list[str], zero_prefix: bool) -> str:
    batch_id = await create_batch(url, blobs, len(lines), lines=lines)
    async with open_pool(url, max_size=1) as pool:
        done = await ingest_next(
            pool, blobs, max_requests=len(lines), now=lambda: datetime.now(UTC)
        )
        assert done == batch_id
        if zero_prefix:  # dispatch without prefix awareness: line order, free placement
            async with pool.connection() as conn:
                await conn.execute("UPDATE requests SET prefix_key = 0")
    return batch_id


def run_batch(
    server: str,
    engine_url: str,
    lines: list[str],
    *,
    env: dict[str, str] | None = None,
    zero_prefix: bool = False,
    timeout: float = 1800,
) -> Run:
    """Queue ``lines`` as one batch in a fresh database, run one worker process against
    ``engine_url`` until every request settled, and measure its throughput."""
    with fresh_database(server) as url, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_queue(url, LocalBlobStore(Path(tmp)), lines, zero_prefix))
        worker_env = {
            **os.environ,
            "INFERBATCH_DATABASE_URL": url,
            "INFERBATCH_ENGINE_URL": engine_url,
            "INFERBATCH_LOG_LEVEL": "WARNING",
            "INFERBATCH_ESCALATE_ON_RETRY": "false",  # one spot worker runs everything
            **(env or {}),
        }
        worker = [sys.executable, "-m", "inferbatch", "worker", "--pool", "spot"]
        with _processes([worker], worker_env):
            _wait_count(url, "SELECT count(*) FROM request_results", len(lines), timeout)
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'completed'), "
                "extract(epoch FROM max(finished_at) - min(started_at))::float8, "
                "extract(epoch FROM min(started_at))::float8 FROM request_results"
            ).fetchone()
            times = conn.execute(
                "SELECT extract(epoch FROM finished_at - min(started_at) OVER ())::float8 "
                "FROM request_results ORDER BY finished_at"
            ).fetchall()
    assert row is not None
    completed, seconds, started_at = row
    if completed != len(lines):
        raise AssertionError(f"{completed} of {len(lines)} completed")
    return Run(len(lines), seconds, tuple(t for (t,) in times), started_at)


def sim_stats(url: str) -> dict[str, object]:
    stats: dict[str, object] = httpx.get(url + "/sim/stats", timeout=5).json()
    return stats
