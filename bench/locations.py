"""Data residency's cost in the claim: claim rates with locations over the plain claim.

Each scenario drains ``--size`` queued requests in claims of 100 through a
:class:`~inferbatch.db.requests.QueueCursor` (as a worker claims), in a fresh database on
the same server, in the same run:

- reference: unrestricted requests, a worker that declared no location (the plain claim);
- located: the same, a worker in ``us-east-1a`` (the claim that also reads the location
  sets that allow it; none exist): goal >= 0.95;
- others' backlog: the same, with as many requests restricted to ``eu-*`` queued too,
  which the ``us-east-1a`` worker must step over without reading: goal >= 0.95;
- restricted: requests restricted to ``us-*``, the ``us-east-1a`` worker: the restricted
  path itself (shown, no goal).

Rates are the best of ``--repeat`` runs. Usage: python -m bench.locations [--size 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import bench_server, create_batch, fresh_database
from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import requests as queue
from inferbatch.db.connector import open_pool
from inferbatch.scheduler.ingest import ingest_next

CLAIM = 100


async def _queue(url: str, blobs: LocalBlobStore, n: int, prefix: str, allowed: str | None) -> None:
    batch_id = await create_batch(url, blobs, n, prefix)
    async with open_pool(url, max_size=1) as pool, pool.connection() as conn:
        # the inputs of every batch are alike: no deduplication between them
        await conn.execute(
            "UPDATE batches SET dedup_scope = 'off', metadata = CASE WHEN %(allowed)s::text"
            " IS NULL THEN NULL ELSE jsonb_build_object('allowed_locations', %(allowed)s) END"
            " WHERE id = %(id)s",
            {"allowed": allowed, "id": batch_id},
        )
    async with open_pool(url, max_size=1) as pool:
        done = await ingest_next(pool, blobs, max_requests=n, now=lambda: datetime.now(UTC))
    assert done == batch_id
    async with open_pool(url, max_size=1) as pool, pool.connection() as conn:
        await conn.execute("ANALYZE requests")


async def _drain(url: str, location: str | None, expect: int) -> float:
    """Claims per second until ``expect`` requests are claimed."""
    cursor = queue.QueueCursor("spot", location=location)
    got = 0
    async with open_pool(url, max_size=1) as pool:
        started = time.perf_counter()
        while got < expect:
            async with pool.connection() as conn:
                claimed = await cursor.claim(conn, owner="bench", n=CLAIM)
            assert claimed, f"queue ran dry after {got} of {expect}"
            got += len(claimed)
        took = time.perf_counter() - started
    return got / took


async def _scenario(
    server: str, size: int, location: str | None, queued: list[tuple[str, str | None]]
) -> float:
    with fresh_database(server) as url, tempfile.TemporaryDirectory() as tmp:
        blobs = LocalBlobStore(Path(tmp))
        for prefix, allowed in queued:
            await _queue(url, blobs, size, prefix, allowed)
        return await _drain(url, location, size)


async def main(size: int, repeat: int) -> None:
    scenarios: dict[str, tuple[str | None, list[tuple[str, str | None]]]] = {
        "reference": (None, [("any", None)]),
        "located": ("us-east-1a", [("any", None)]),
        "others' backlog": ("us-east-1a", [("eu", "eu-*"), ("any", None)]),
        "restricted": ("us-east-1a", [("us", "us-*")]),
    }
    best: dict[str, float] = {}
    with bench_server() as server:
        for _ in range(repeat):
            for name, (location, queued) in scenarios.items():
                rate = await _scenario(server, size, location, queued)
                best[name] = max(best.get(name, 0.0), rate)
    ref = best["reference"]
    print(f"claims of {CLAIM}, {size} requests per scenario, best of {repeat}")
    for name, rate in best.items():
        goal = "" if name in ("reference", "restricted") else "  (goal >= 0.95)"
        print(f"{name:>16}: {rate:9.0f} requests/s  {rate / ref:5.2f}x reference{goal}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.size, args.repeat))
