"""What a worker records from an engine's HTTP answer, against a real HTTP server: a 2xx
that is not JSON is never a completed request, and every answer carries a request id."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from openai.types.responses import Response

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import batches, dedup
from inferbatch.db.types import Pool
from inferbatch.engines.client import HttpEngine
from inferbatch.engines.registry import ANY_MODEL, EngineRegistry
from inferbatch.scheduler.finalize import finish_ready
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services.serialize import batch_object
from inferbatch.worker.worker import Worker, WorkerConfig
from tests.helpers import chat_file
from tests.integration.fixtures import (
    REQUESTS_JOINED,
    fold_counters,
    make_batch,
    make_user,
    utcnow,
)

pytestmark = pytest.mark.integration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def _engine(handler: Handler) -> AsyncIterator[HttpEngine]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with _app_engine(app) as engine:
        yield engine


async def _run(
    pool: Pool, tmp_path: Path, engine: HttpEngine, n: int, content: bytes | None = None
) -> list[dict[str, object]]:
    """Ingest ``n`` chat lines (or ``content``), run one worker until every request
    settled; the rows."""
    user = await make_user(pool)
    await make_batch(pool, LocalBlobStore(tmp_path), user, content or chat_file(n))
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
                    await dedup.settle_followers(conn)  # the scheduler's duty
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


async def test_cached_and_reasoning_tokens_reach_the_batch_usage(
    pool: Pool, tmp_path: Path
) -> None:
    async def detailed(request: web.Request) -> web.Response:
        usage = {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 8},
            "completion_tokens_details": {"reasoning_tokens": 3},
        }
        return web.json_response({"object": "chat.completion", "usage": usage})

    # four distinct lines and two copies of the first: the copies are answered by
    # deduplication and carry the answer's counts, as their input and output tokens do
    lines = chat_file(4).decode().splitlines()
    copies = [lines[0].replace('"req-0"', f'"copy-{i}"') for i in range(2)]
    async with _engine(detailed) as engine:
        rows = await _run(pool, tmp_path, engine, 0, ("\n".join(lines + copies) + "\n").encode())
    assert [r["status"] for r in rows] == ["completed"] * 6
    await fold_counters(pool)
    async with pool.connection() as conn:
        (batch,) = await batches.list_page(conn, None, after=None, limit=1)
    assert (batch.input_tokens, batch.output_tokens) == (60, 30)
    assert (batch.cached_tokens, batch.reasoning_tokens) == (48, 18)  # live, from the counters
    blobs = LocalBlobStore(tmp_path)
    assert await finish_ready(pool, blobs, retention=timedelta(days=1), now=utcnow) == 1
    async with pool.connection() as conn:
        done = await batches.get(conn, batch.id, None)
    assert done is not None and done.status == "completed"
    usage = batch_object(done).usage.model_dump()
    assert usage == {
        "input_tokens": 60,
        "input_tokens_details": {"cached_tokens": 48},
        "output_tokens": 30,
        "output_tokens_details": {"reasoning_tokens": 18},
        "total_tokens": 90,
    }


async def _serving(*, responses: bool) -> tuple[web.Application, list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append((request.path, await request.json()))
        message = {"role": "assistant", "content": "Hello."}
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return web.json_response({"object": "chat.completion", "choices": [choice], "usage": usage})

    async def native(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.path, body))
        if "input" not in body:
            return web.json_response({"error": {"message": "input is required"}}, status=400)
        return web.json_response({"object": "response", "id": "resp_native", "output": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    if responses:
        app.router.add_post("/v1/responses", native)
    return app, seen


@contextlib.asynccontextmanager
async def _app_engine(app: web.Application, mode: str = "auto") -> AsyncIterator[HttpEngine]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    engine = HttpEngine(f"http://127.0.0.1:{port}/v1", max_in_flight=4, timeout=10, responses=mode)
    try:
        yield engine
    finally:
        await engine.aclose()
        await runner.cleanup()


RESPONSES_BODY = b'{"model":"m","input":"Hi","instructions":"Be brief.","max_output_tokens":5}'


async def test_responses_go_as_they_are_to_an_engine_that_serves_them() -> None:
    app, seen = await _serving(responses=True)
    async with _app_engine(app) as engine:
        answers = await asyncio.gather(
            *(engine.call("/v1/responses", RESPONSES_BODY) for _ in range(3))
        )
    assert [a.body["id"] for a in answers] == ["resp_native"] * 3
    assert [path for path, _ in seen] == ["/v1/responses"] * 4  # one probe, then each call
    assert seen[0][1] == {} and all(body["input"] == "Hi" for _, body in seen[1:])


async def test_responses_are_translated_for_an_engine_that_serves_only_chat() -> None:
    app, seen = await _serving(responses=False)
    async with _app_engine(app) as engine:
        answer = await engine.call("/v1/responses", RESPONSES_BODY)
        refused = await engine.call(
            "/v1/responses", b'{"model":"m","input":"x","conversation":"c"}'
        )
    response = Response.model_validate(answer.body)
    assert answer.status == 200 and response.output_text == "Hello."
    assert answer.text is not None and Response.model_validate_json(answer.text).id == response.id
    assert response.usage is not None and response.usage.output_tokens == 2
    assert seen == [
        (
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                ],
                "max_tokens": 5,
            },
        )
    ]
    assert refused.status == 400 and refused.body["error"]["param"] == "conversation"


async def test_a_configured_mode_skips_the_probe() -> None:
    app, seen = await _serving(responses=True)
    async with _app_engine(app, mode="chat") as engine:
        answer = await engine.call("/v1/responses", RESPONSES_BODY)
    assert answer.body["object"] == "response" and answer.body["id"] != "resp_native"
    assert [path for path, _ in seen] == ["/v1/chat/completions"]


async def test_a_probe_that_gets_a_server_error_is_asked_again() -> None:
    probes: list[int] = []

    async def busy_then_absent(request: web.Request) -> web.Response:
        probes.append(len(probes))
        status = 503 if len(probes) == 1 else 404  # a proxy in front, then the engine
        return web.json_response({"error": {"message": "x"}}, status=status)

    app, seen = await _serving(responses=False)
    app.router.add_post("/v1/responses", busy_then_absent)
    async with _app_engine(app) as engine:
        first = await engine.call("/v1/responses", RESPONSES_BODY)
        second = await engine.call("/v1/responses", RESPONSES_BODY)
        third = await engine.call("/v1/responses", RESPONSES_BODY)
    assert first.status == 503  # the probe's answer: a retryable failure of this attempt
    assert second.status == 200 and third.status == 200
    assert len(probes) == 2  # asked again after the 503, then known
    assert [path for path, _ in seen] == ["/v1/chat/completions"] * 2
