"""What a worker records from an engine's HTTP answer, against a real HTTP server: a 2xx
that is not JSON is never a completed request, and every answer carries a request id."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db.types import Pool
from inferbatch.engines.client import HttpEngine
from inferbatch.engines.registry import ANY_MODEL, EngineRegistry
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.worker.worker import Worker, WorkerConfig
from tests.helpers import chat_file
from tests.integration.fixtures import REQUESTS_JOINED, make_batch, make_user, utcnow

pytestmark = pytest.mark.integration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def _engine(handler: Handler) -> AsyncIterator[HttpEngine]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    engine = HttpEngine(f"http://127.0.0.1:{port}/v1", max_in_flight=4, timeout=10)
    try:
        yield engine
    finally:
        await engine.aclose()
        await runner.cleanup()


async def _run(pool: Pool, tmp_path: Path, engine: HttpEngine, n: int) -> list[dict[str, object]]:
    """Ingest ``n`` chat lines, run one worker until every request settled; the rows."""
    user = await make_user(pool)
    await make_batch(pool, LocalBlobStore(tmp_path), user, chat_file(n))
    await ingest_next(pool, LocalBlobStore(tmp_path), max_requests=1000, now=utcnow)
    config = WorkerConfig(
        pool="spot",
        lease_seconds=30,
        max_attempts=2,
        retry_base_seconds=0.01,
        retry_max_seconds=0.05,
        drain_seconds=1,
        poll_seconds=0.05,
        flush_seconds=0.01,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(config, pool, EngineRegistry({ANY_MODEL: engine})).run(stop))
    query = (
        f"SELECT status, attempts, response_status, response_request_id, error->>'code' AS code "
        f"FROM {REQUESTS_JOINED} ORDER BY id"
    )
    try:
        async with asyncio.timeout(20):
            while True:
                async with pool.connection() as conn:
                    rows = await (await conn.execute(query)).fetchall()
                if all(r["status"] in ("completed", "failed") for r in rows):
                    return rows
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


async def test_a_2xx_event_stream_is_retried_then_failed_never_completed(
    pool: Pool, tmp_path: Path
) -> None:
    calls = 0

    async def sse(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        text = 'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
        return web.Response(text=text, content_type="text/event-stream")

    async with _engine(sse) as engine:
        rows = await _run(pool, tmp_path, engine, 3)
    assert [(r["status"], r["code"], r["response_status"]) for r in rows] == [
        ("failed", "invalid_engine_response", None)
    ] * 3
    assert calls == 6  # two attempts each: a glitch of a proxy may pass


async def test_an_empty_2xx_body_is_a_failure(pool: Pool, tmp_path: Path) -> None:
    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async with _engine(empty) as engine:
        rows = await _run(pool, tmp_path, engine, 2)
    assert {r["status"] for r in rows} == {"failed"}


async def test_every_answer_has_a_request_id_even_when_the_engine_sends_none(
    pool: Pool, tmp_path: Path
) -> None:
    calls = 0

    async def plain(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        headers = {"x-request-id": f"engine-{calls}"} if calls % 2 else {}
        return web.json_response({"object": "chat.completion", "usage": usage}, headers=headers)

    async with _engine(plain) as engine:
        rows = await _run(pool, tmp_path, engine, 6)
    ids = [r["response_request_id"] for r in rows]
    assert {r["status"] for r in rows} == {"completed"}
    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 6
    assert sum(1 for i in ids if str(i).startswith("engine-")) == 3
    assert sum(1 for i in ids if str(i).startswith("req_")) == 3
