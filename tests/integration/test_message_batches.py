"""Message Batches through the queue on real PostgreSQL and real HTTP engines: an engine
that serves ``/v1/messages`` gets each body unchanged, one that does not gets a chat
completion and its answer comes back a Message; the request counts of an expired or a
cancelled batch tell errored, expired and canceled requests apart exactly; delete leaves
nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp import web
from anthropic.types import Message
from anthropic.types.messages import MessageBatchIndividualResponse

from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import batches
from inferbatch.db import requests as queue
from inferbatch.db.types import Pool
from inferbatch.domain import BatchRecord, Principal
from inferbatch.engines.client import HttpEngine
from inferbatch.engines.registry import ANY_MODEL, EngineRegistry
from inferbatch.errors import Conflict, NotFound
from inferbatch.scheduler.finalize import finish_batch, finish_ready
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import message_batches as service
from inferbatch.worker.worker import Worker, WorkerConfig
from tests.helpers import chat_file
from tests.integration.fixtures import (
    fold_counters,
    make_batch,
    make_project,
    make_user,
    utcnow,
)

pytestmark = pytest.mark.integration

SETTINGS = Settings()
WORKER = WorkerConfig(
    pool="spot",
    lease_seconds=30,
    max_attempts=1,
    retry_base_seconds=0.01,
    retry_max_seconds=0.05,
    drain_seconds=0.2,
    poll_seconds=0.05,
    flush_seconds=0.01,
)


def _params(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


async def _create(pool: Pool, blobs: LocalBlobStore, user: Principal, **params: Any) -> BatchRecord:
    body = {"requests": [{"custom_id": cid, "params": p} for cid, p in params.items()]}
    return await service.create(
        pool, blobs, SETTINGS, user, io.BytesIO(orjson.dumps(body)), utcnow()
    )


@contextlib.asynccontextmanager
async def _engine(app: web.Application) -> AsyncIterator[HttpEngine]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    engine = HttpEngine(f"http://127.0.0.1:{port}/v1", max_in_flight=8, timeout=30)
    try:
        yield engine
    finally:
        await engine.aclose()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _worker(pool: Pool, engine: HttpEngine) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(WORKER, pool, EngineRegistry({ANY_MODEL: engine})).run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def _settled(pool: Pool, batch_id: str, n: int) -> None:
    """Wait until ``n`` requests of the batch have settled."""
    for _ in range(400):
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT status, count(*) AS n FROM requests WHERE batch_id = %s GROUP BY status",
                (batch_id,),
            )
            statuses = {r["status"]: r["n"] for r in await cur.fetchall()}
        if statuses.get("completed", 0) + statuses.get("failed", 0) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} requests settled: {statuses}")


async def _results(
    pool: Pool, blobs: LocalBlobStore, user: Principal, batch_id: str
) -> dict[str, Any]:
    lines = b"".join([chunk async for chunk in await service.results(pool, blobs, user, batch_id)])
    parsed = [MessageBatchIndividualResponse.model_validate_json(x) for x in lines.splitlines()]
    return {r.custom_id: r.result for r in parsed}


def _blob_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _counts(batch: BatchRecord) -> dict[str, int]:
    return service.request_counts(batch).model_dump()


async def _get(pool: Pool, user: Principal, batch_id: str) -> BatchRecord:
    return await service.get(pool, user, batch_id)


async def test_an_engine_serving_messages_gets_each_body_unchanged(
    pool: Pool, tmp_path: Path
) -> None:
    seen: list[tuple[str, Any]] = []

    async def messages(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.path, body))
        if "messages" not in body:  # the probe
            error = {"type": "invalid_request_error", "message": "messages: Field required"}
            return web.json_response({"type": "error", "error": error}, status=400)
        usage = {"input_tokens": 7, "output_tokens": 2, "cache_read_input_tokens": 3}
        answer = {
            "id": "msg_native",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": "Native."}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    sent = _params("Hi", top_k=5, chat_template_kwargs={"enable_thinking": False})
    batch = await _create(pool, blobs, user, a=sent, b=_params("Hello"))
    assert _counts(batch) == {
        "processing": 2,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    await ingest_next(pool, blobs, max_requests=10, now=utcnow)
    async with _engine(app) as engine, _worker(pool, engine):
        await _settled(pool, batch.id, 2)
    await finish_ready(pool, blobs, retention=timedelta(days=1), now=utcnow)
    assert [path for path, _ in seen] == ["/v1/messages"] * 3  # one probe, then each request
    assert seen[0][1] == {}
    assert sorted((b for _, b in seen[1:]), key=lambda b: b["messages"][0]["content"]) == [
        _params("Hello"),
        sent,
    ]
    done = await _get(pool, user, batch.id)
    assert done.status == "completed" and _counts(done)["succeeded"] == 2
    assert (done.input_tokens, done.output_tokens, done.cached_tokens) == (20, 4, 6)
    results = await _results(pool, blobs, user, batch.id)
    assert results["a"].type == "succeeded" and results["a"].message.id == "msg_native"


async def test_an_engine_serving_only_chat_gets_a_chat_completion(
    pool: Pool, tmp_path: Path
) -> None:
    seen: list[tuple[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.path, body))
        message = {"role": "assistant", "content": "Translated."}
        usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        answer = {"object": "chat.completion", "model": "m", "choices": [choice], "usage": usage}
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    refused = _params("x", tools=[{"type": "web_search_20250305", "name": "web_search"}])
    batch = await _create(pool, blobs, user, ok=_params("Hi", system="Be brief."), no=refused)
    await ingest_next(pool, blobs, max_requests=10, now=utcnow)
    async with _engine(app) as engine, _worker(pool, engine):
        await _settled(pool, batch.id, 2)
    await finish_ready(pool, blobs, retention=timedelta(days=1), now=utcnow)
    assert seen == [
        (
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                ],
                "max_tokens": 8,
            },
        )
    ]
    done = await _get(pool, user, batch.id)
    assert _counts(done) == {
        "processing": 0,
        "succeeded": 1,
        "errored": 1,
        "canceled": 0,
        "expired": 0,
    }
    results = await _results(pool, blobs, user, batch.id)
    ok, no = results["ok"], results["no"]
    assert ok.type == "succeeded"
    message = Message.model_validate(ok.message.model_dump())
    assert message.stop_reason == "max_tokens" and message.content[0].type == "text"
    assert message.usage.input_tokens == 9 and message.usage.output_tokens == 3
    assert no.type == "errored" and no.error.error.type == "invalid_request_error"
    assert no.error.error.message.startswith("tools[0]: ")


async def test_an_expired_batch_counts_errored_and_expired_apart(
    pool: Pool, tmp_path: Path
) -> None:
    release = asyncio.Event()

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        text = body["messages"][-1]["content"]
        if text.startswith("bad"):
            return web.json_response({"error": {"message": "no", "type": "x"}}, status=422)
        if text.startswith("slow"):
            await release.wait()
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}}
        return web.json_response(
            {"object": "chat.completion", "choices": [choice | {"finish_reason": "stop"}]}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    batch = await _create(
        pool,
        blobs,
        user,
        ok1=_params("fast 1"),
        ok2=_params("fast 2"),
        bad=_params("bad"),
        slow1=_params("slow 1"),
        slow2=_params("slow 2"),  # distinct: identical requests would be deduplicated
    )
    await ingest_next(pool, blobs, max_requests=10, now=utcnow)
    async with _engine(app) as engine, _worker(pool, engine):
        await _settled(pool, batch.id, 3)  # the slow two are still running
        await fold_counters(pool)
        late = utcnow() + timedelta(hours=25)
        assert await finish_batch(
            pool, blobs, batch.id, "expired", retention=timedelta(days=1), now=lambda: late
        )
        release.set()
    done = await _get(pool, user, batch.id)
    assert done.status == "expired" and done.failed_count == 3
    assert _counts(done) == {
        "processing": 0,
        "succeeded": 2,
        "errored": 1,
        "canceled": 0,
        "expired": 2,
    }
    results = await _results(pool, blobs, user, batch.id)
    assert {k: r.type for k, r in results.items()} == {
        "ok1": "succeeded",
        "ok2": "succeeded",
        "bad": "errored",
        "slow1": "expired",
        "slow2": "expired",
    }
    bad = results["bad"]
    assert bad.type == "errored" and bad.error.error.type == "invalid_request_error"
    assert bad.error.error.message == "no"


async def test_a_cancelled_batch_counts_its_requests_canceled(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    batch = await _create(pool, blobs, user, a=_params("a"), b=_params("b"), c=_params("c"))
    cancelling = await service.cancel(pool, user, batch.id, utcnow())
    assert service.message_batch(cancelling, "http://x").processing_status == "canceling"
    assert await service.cancel(pool, user, batch.id, utcnow()) == cancelling  # again: as is
    await ingest_next(pool, blobs, max_requests=10, now=utcnow)
    async with pool.connection() as conn:
        assert len(await queue.cancel_queued(conn)) == 1  # the scheduler's cancel duty
    await fold_counters(pool)
    await finish_ready(pool, blobs, retention=timedelta(days=1), now=utcnow)
    done = await _get(pool, user, batch.id)
    assert done.status == "cancelled"
    assert _counts(done) == {
        "processing": 0,
        "succeeded": 0,
        "errored": 0,
        "canceled": 3,
        "expired": 0,
    }
    wire = service.message_batch(done, "http://api:8000/")
    assert wire.processing_status == "ended" and wire.ended_at == done.cancelled_at
    assert wire.cancel_initiated_at == done.cancelling_at
    assert wire.results_url == f"http://api:8000/v1/messages/batches/{batch.id}/results"
    results = await _results(pool, blobs, user, batch.id)
    assert {r.type for r in results.values()} == {"canceled"} and len(results) == 3
    with pytest.raises(Conflict):
        await service.cancel(pool, user, batch.id, utcnow())


async def test_delete_removes_the_batch_its_requests_and_its_files(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    other = await make_user(pool, "bob", project_id=await make_project(pool))
    batch = await _create(pool, blobs, user, a=_params("a"), b=_params("b"))
    with pytest.raises(Conflict):  # still processing
        await service.delete(pool, blobs, user, batch.id)
    with pytest.raises(Conflict):
        await service.results(pool, blobs, user, batch.id)
    await service.cancel(pool, user, batch.id, utcnow())
    await ingest_next(pool, blobs, max_requests=10, now=utcnow)
    async with pool.connection() as conn:
        await queue.cancel_queued(conn)
    await finish_ready(pool, blobs, retention=timedelta(days=1), now=utcnow)
    with pytest.raises(NotFound):  # another project's batch is not found
        await service.delete(pool, blobs, other, batch.id)
    assert _blob_files(tmp_path)
    await service.delete(pool, blobs, user, batch.id)
    with pytest.raises(NotFound):
        await service.get(pool, user, batch.id)
    assert not _blob_files(tmp_path)  # every blob gone
    async with pool.connection() as conn:
        for table, column in (
            ("batches", "id"),
            ("requests", "batch_id"),
            ("request_inputs", "batch_id"),
            ("request_results", "batch_id"),
            ("request_deltas", "batch_id"),
            ("batch_events", "batch_id"),
        ):
            cur = await conn.execute(
                f"SELECT count(*) AS n FROM {table} WHERE {column} = %s", (batch.id,)
            )
            row = await cur.fetchone()
            assert row is not None and row["n"] == 0, table
        cur = await conn.execute("SELECT count(*) AS n FROM files")
        row = await cur.fetchone()
        assert row is not None and row["n"] == 0
        assert await batches.get(conn, batch.id, None) is None


async def test_listing_pages_both_ways_and_shows_only_message_batches(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    created = [(await _create(pool, blobs, user, a=_params(str(i)))).id for i in range(5)]
    await make_batch(pool, blobs, user, chat_file(1))  # an OpenAI batch: not listed here
    newest = created[::-1]
    page, more = await service.list_page(pool, user, after_id=None, before_id=None, limit=2)
    assert [b.id for b in page] == newest[:2] and more
    page, more = await service.list_page(pool, user, after_id=newest[1], before_id=None, limit=2)
    assert [b.id for b in page] == newest[2:4] and more
    page, more = await service.list_page(pool, user, after_id=newest[3], before_id=None, limit=2)
    assert [b.id for b in page] == newest[4:] and not more
    page, more = await service.list_page(pool, user, after_id=None, before_id=newest[4], limit=2)
    assert [b.id for b in page] == newest[2:4] and more
    page, more = await service.list_page(pool, user, after_id=None, before_id=newest[2], limit=2)
    assert [b.id for b in page] == newest[:2] and not more
    other = await make_user(pool, "bob", project_id=await make_project(pool))
    page, more = await service.list_page(pool, other, after_id=None, before_id=None, limit=20)
    assert page == [] and not more
    fellow = await make_user(pool, "carol")  # of the same project: sees them all
    page, _ = await service.list_page(pool, fellow, after_id=None, before_id=None, limit=20)
    assert [b.id for b in page] == newest
    admin = await make_user(pool, "root", admin=True)
    page, _ = await service.list_page(pool, admin, after_id=None, before_id=None, limit=20)
    assert [b.id for b in page] == newest


async def test_a_create_that_fails_in_the_database_leaves_no_blob(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    # no such project: the insert fails
    ghost = Principal(id="u-ghost", name="ghost", is_admin=False, project_id="proj_ghost")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        await _create(pool, blobs, ghost, a=_params("a"))
    assert not _blob_files(tmp_path)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT (SELECT count(*) FROM batches) AS n")
        row = await cur.fetchone()
    assert row is not None and row["n"] == 0
