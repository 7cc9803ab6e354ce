"""Fair share between projects: a small batch behind a big one at the same priority.

Project A queues ``--a-requests`` (default 200,000) requests, then project B queues 1,000
at the same priority and window (so a later deadline), weights equal. ``--workers``
simulated workers (asyncio tasks) each claim ``--claim`` requests through a
:class:`~inferbatch.db.requests.QueueCursor`, hold them ``--service-ms`` and settle them
with :func:`~inferbatch.db.requests.record_outcomes`: the real statements, on a real
PostgreSQL. B's completion time, from the start of the workers to its last result, in the
same run:

- fair: fair share on;
- fcfs: fair share off (earliest deadline first: B waits for all of A);
- half alone: B alone in the queue on half the workers.

It prints ``fair / half alone`` (goal <= 2.5) and ``fcfs / half alone``, and claim rates
with fair share on over off (50,000 requests in claims of 100 through cursors, best of
five, alternating): one project and one claimer (the plain claim: goal >= 0.9), two
projects and eight concurrent claimers (the shared claim: no lock between them). Every
scenario runs in a copy of one filled database.
Usage: python -m bench.fair_share [--a-requests 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench.common import _with_dbname, bench_server, create_batch, fresh_database
from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import requests as queue
from inferbatch.db.connector import open_pool
from inferbatch.db.types import Pool
from inferbatch.scheduler.ingest import ingest_next

B_REQUESTS = 1000
RATE_REQUESTS = 50_000
RATE_CLAIM = 100
RATE_REPEAT = 5


async def _queue(url: str, blobs: LocalBlobStore, n: int, project: str) -> str:
    async with open_pool(url, max_size=1) as pool, pool.connection() as conn:
        await conn.execute(
            "INSERT INTO projects (id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (project, project),
        )
    batch_id = await create_batch(url, blobs, n, project, project_id=project)
    async with open_pool(url, max_size=1) as pool, pool.connection() as conn:
        # the inputs of every batch are alike: no deduplication between them
        await conn.execute("UPDATE batches SET dedup_scope = 'off' WHERE id = %s", (batch_id,))
    async with open_pool(url, max_size=1) as pool:
        done = await ingest_next(pool, blobs, max_requests=n, now=lambda: datetime.now(UTC))
    assert done == batch_id
    async with open_pool(url, max_size=1) as pool, pool.connection() as conn:
        await conn.execute("ANALYZE requests")
    return batch_id


@contextmanager
def _copy(server: str, template: str) -> Iterator[str]:
    """A database copied from ``template`` (no session may be connected to it)."""
    name = f"{template}_copy"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _with_dbname(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _finish_time(
    url: str, batch_id: str, workers: int, claim: int, service_s: float, fair: bool
) -> float:
    """Seconds from the workers' start until every request of ``batch_id`` settled."""
    left = B_REQUESTS
    done = asyncio.Event()

    async def work(pool: Pool, owner: str) -> None:
        nonlocal left
        cursor = queue.QueueCursor("spot", fair_share=fair)
        while not done.is_set():
            async with pool.connection() as conn:
                claimed = await cursor.claim(conn, owner=owner, n=claim)
            if not claimed:
                await asyncio.sleep(service_s)
                continue
            await asyncio.sleep(service_s)
            outcomes = [
                queue.Outcome(c.id, c.attempt, "completed", response_status=200, response_text="{}")
                for c in claimed
            ]
            async with pool.connection() as conn:
                await queue.record_outcomes(conn, owner, outcomes)
            left -= sum(c.batch_id == batch_id for c in claimed)
            if left <= 0:
                done.set()

    async with open_pool(url, min_size=workers, max_size=workers) as pool:
        started = time.perf_counter()
        await asyncio.gather(*(work(pool, f"w{i}") for i in range(workers)))
        return time.perf_counter() - started


async def _claim_rate(url: str, fair: bool, claimers: int) -> float:
    """Requests claimed per second by ``claimers`` cursors until ``RATE_REQUESTS`` are."""
    got = 0

    async def claimer(pool: Pool, owner: str) -> None:
        nonlocal got
        cursor = queue.QueueCursor("spot", fair_share=fair)
        while got < RATE_REQUESTS:
            async with pool.connection() as conn:
                claimed = await cursor.claim(conn, owner=owner, n=RATE_CLAIM)
            if not claimed:  # the rest is locked by the others' claims, or taken
                return
            got += len(claimed)

    async with open_pool(url, min_size=claimers, max_size=claimers) as pool:
        started = time.perf_counter()
        await asyncio.gather(*(claimer(pool, f"c{i}") for i in range(claimers)))
        return got / (time.perf_counter() - started)


async def main(a_requests: int, workers: int, claim: int, service_ms: float) -> None:
    service_s = service_ms / 1000
    with bench_server() as server, tempfile.TemporaryDirectory() as tmp:
        blobs = LocalBlobStore(Path(tmp))
        with fresh_database(server) as both_url, fresh_database(server) as alone_url:
            filled = time.perf_counter()
            await _queue(both_url, blobs, a_requests, "proj_a")
            b_batch = await _queue(both_url, blobs, B_REQUESTS, "proj_b")
            b_alone = await _queue(alone_url, blobs, B_REQUESTS, "proj_b")
            filled = time.perf_counter() - filled
            both, alone = both_url.rsplit("/", 1)[1], alone_url.rsplit("/", 1)[1]
            times: dict[str, float] = {}
            for name, template, batch, k, fair in (
                ("fair", both, b_batch, workers, True),
                ("fcfs", both, b_batch, workers, False),
                ("half alone", alone, b_alone, workers // 2, True),
            ):
                with _copy(server, template) as url:
                    times[name] = await _finish_time(url, batch, k, claim, service_s, fair)
        rates: dict[tuple[str, bool], float] = {}
        with fresh_database(server) as one_url, fresh_database(server) as two_url:
            await _queue(one_url, blobs, RATE_REQUESTS, "proj_a")
            for project in ("proj_a", "proj_b"):
                await _queue(two_url, blobs, RATE_REQUESTS // 2, project)
            for i in range(RATE_REPEAT):
                for name, db_url, claimers in (("one", one_url, 1), ("two", two_url, 8)):
                    for fair in (i % 2 == 0, i % 2 == 1):
                        with _copy(server, db_url.rsplit("/", 1)[1]) as url:
                            rate = await _claim_rate(url, fair, claimers)
                        rates[name, fair] = max(rates.get((name, fair), 0.0), rate)
    print(
        f"A {a_requests} queued, then B {B_REQUESTS} (same priority and window, equal "
        f"weights); {workers} workers claiming {claim}, {service_ms:g} ms each; "
        f"filled in {filled:.0f} s"
    )
    half = times["half alone"]
    for name, took in times.items():
        print(f"{name:>11}: B finished in {took:8.2f} s  {took / half:7.2f}x half alone")
    print("goal: fair / half alone <= 2.5")
    for name, what in (("one", "one project, 1 claimer"), ("two", "two projects, 8 claimers")):
        on, off = rates[name, True], rates[name, False]
        print(
            f"{what}, claims of {RATE_CLAIM}: {on:.0f} requests/s fair share on, "
            f"{off:.0f} off: {on / off:.2f}x (goal >= 0.9)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--a-requests", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--claim", type=int, default=4)
    parser.add_argument("--service-ms", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(main(args.a_requests, args.workers, args.claim, args.service_ms))
