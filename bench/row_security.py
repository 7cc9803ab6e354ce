"""The cost of row-level security on API latency: the same routes with
``INFERBATCH_ROW_SECURITY=on`` and ``off``, in one run, on one database.

Two apps in this process (httpx over ASGI, no network) share a migrated database in which
one project holds ``--mine`` batches and files and another ``--theirs``, with one batch of
``--requests`` ingested requests in the measured project. A non-admin key of the measured
project calls, alternating between the two apps so that both see the same cache and load:
retrieve batch, list batches (20), list files (20), list a batch's requests (20; the
policy through the batch), and create a small file. Prints p50 and p95 in milliseconds for
each route and setting, and the on/off ratio of each.

Usage: python -m bench.row_security [--rounds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from fastapi import FastAPI

from bench.common import bench_database
from inferbatch.api.app import create_app
from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import users
from inferbatch.db.connector import open_pool
from inferbatch.db.projects import insert_project
from inferbatch.engines.registry import EngineRegistry
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import projects

Call = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


def _lines(n: int) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return "".join(
        json.dumps(
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
        + "\n"
        for i in range(n)
    ).encode()


async def _key(url: str, project: str, name: str) -> str:
    async with open_pool(url) as pool, pool.connection() as conn:
        await insert_project(conn, project, project, _now())
        user = await users.ensure_user(conn, name, is_admin=False)
        _, key = await projects.create_user_key(conn, project, user.id, role="owner")
    return key


def _now() -> datetime:
    return datetime.now(UTC)


async def _fill(client: httpx.AsyncClient, key: str, n: int, lines: int = 2) -> str:
    """``n`` files and batches; returns the last batch's id."""
    auth = {"authorization": f"Bearer {key}"}
    batch_id = ""
    for _ in range(n):
        up = await client.post(
            "/v1/files",
            headers=auth,
            data={"purpose": "batch"},
            files={"file": ("in.jsonl", _lines(lines), "application/jsonl")},
        )
        up.raise_for_status()
        made = await client.post(
            "/v1/batches",
            headers=auth,
            json={
                "input_file_id": up.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        made.raise_for_status()
        batch_id = made.json()["id"]
    return batch_id


def _app(url: str, blobs: Path, row_security: bool) -> FastAPI:
    settings = Settings(blob_dir=blobs, row_security=row_security)
    return create_app(
        settings, url, LocalBlobStore(blobs), EngineRegistry.from_specs({}, timeout=1)
    )


def _routes(key: str, batch_id: str, big_batch: str) -> dict[str, Call]:
    auth = {"authorization": f"Bearer {key}"}
    small = _lines(1)
    return {
        "retrieve batch": lambda c: c.get(f"/v1/batches/{batch_id}", headers=auth),
        "list batches": lambda c: c.get("/v1/batches?limit=20", headers=auth),
        "list files": lambda c: c.get("/v1/files?limit=20", headers=auth),
        "list requests": lambda c: c.get(
            f"/v1/batches/{big_batch}/requests?limit=20", headers=auth
        ),
        "create file (small)": lambda c: c.post(
            "/v1/files",
            headers=auth,
            data={"purpose": "batch"},
            files={"file": ("one.jsonl", small, "application/jsonl")},
        ),
    }


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def main(rounds: int, mine: int, theirs: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, bench_database() as url:
        blobs = Path(tmp)
        key = await _key(url, "proj_mine", "mine")
        other = await _key(url, "proj_theirs", "theirs")
        on, off = _app(url, blobs, True), _app(url, blobs, False)
        async with on.router.lifespan_context(on), off.router.lifespan_context(off):
            clients = {
                setting: httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://api"
                )
                for setting, app in (("on", on), ("off", off))
            }
            await _fill(clients["off"], other, theirs)
            batch_id = await _fill(clients["off"], key, mine)
            big = await _fill(clients["off"], key, 1, lines=requests)
            async with open_pool(url) as pool:
                while await ingest_next(pool, LocalBlobStore(blobs), max_requests=10**6, now=_now):
                    pass
            routes = _routes(key, batch_id, big)
            took: dict[tuple[str, str], list[float]] = {}
            for i in range(rounds + 20):
                for name, call in routes.items():
                    order = ("on", "off") if i % 2 else ("off", "on")
                    for setting in order:
                        t0 = time.perf_counter()
                        answer = await call(clients[setting])
                        elapsed = (time.perf_counter() - t0) * 1000
                        answer.raise_for_status()
                        if i >= 20:  # warm-up rounds are not counted
                            took.setdefault((name, setting), []).append(elapsed)
            for c in clients.values():
                await c.aclose()
    print(
        f"{rounds} rounds; {mine} batches here, {theirs} in another project; "
        f"{requests} requests in the listed batch"
    )
    print(
        f"{'route':22} {'p50 on':>8} {'p50 off':>8} {'ratio':>6} "
        f"{'p95 on':>8} {'p95 off':>8} {'ratio':>6}"
    )
    for name in routes:
        a, b = took[(name, "on")], took[(name, "off")]
        p50a, p50b, p95a, p95b = _p(a, 50), _p(b, 50), _p(a, 95), _p(b, 95)
        print(
            f"{name:22} {p50a:8.2f} {p50b:8.2f} {p50a / p50b:6.2f} "
            f"{p95a:8.2f} {p95b:8.2f} {p95a / p95b:6.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--mine", type=int, default=100)
    parser.add_argument("--theirs", type=int, default=400)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.mine, args.theirs, args.requests))
