"""Finishing batches: output and error files hold every custom_id exactly once, counts
match the files, and expired or cancelled batches keep what finished."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import batches, counters, files
from inferbatch.db import requests as queue
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.domain import BatchRecord
from inferbatch.metrics import SchedulerMetrics
from inferbatch.scheduler.finalize import finish_ready
from inferbatch.scheduler.ingest import ingest_next
from tests.helpers import chat_file, parse_jsonl
from tests.integration.fixtures import make_batch, make_user, utcnow

pytestmark = pytest.mark.integration

RETENTION = timedelta(days=30)


async def _setup(pool: Pool, blobs: LocalBlobStore, n: int, window: str = "24h") -> str:
    user = await make_user(pool)
    batch = await make_batch(pool, blobs, user, chat_file(n), window=window)
    await ingest_next(pool, blobs, max_requests=1000, now=utcnow)
    return batch.id


async def _content(pool: Pool, blobs: LocalBlobStore, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    async with pool.connection() as conn:
        record = await files.get(conn, file_id, None)
    assert record is not None and record.purpose == "batch_output"
    return parse_jsonl(b"".join(blobs.iter_chunks(record.blob_key)).decode())


async def _batch(pool: Pool, batch_id: str) -> BatchRecord:
    async with pool.connection() as conn:
        b = await batches.get(conn, batch_id, None)
    assert b is not None
    return b


async def _claim(pool: Pool, n: int):
    async with pool.connection() as conn:
        return await queue.claim(conn, pool="spot", owner="w", n=n)


async def _record(pool: Pool, outcomes: list[Outcome]) -> set[int]:
    async with pool.connection() as conn:
        return await queue.record_outcomes(conn, "w", outcomes)


async def test_completed_batch_splits_results_between_output_and_error_files(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    batch_id = await _setup(pool, blobs, 4)
    claimed = await _claim(pool, 4)
    assert await finish_ready(pool, blobs, retention=RETENTION, now=utcnow) == 0
    await _record(
        pool,
        [
            Outcome(
                c.id,
                c.attempt,
                "completed" if i < 3 else "failed",
                response_status=200 if i < 3 else 400,
                response_body={"n": i},
                prompt_tokens=2,
                completion_tokens=3,
            )
            for i, c in enumerate(claimed)
        ],
    )
    assert await finish_ready(pool, blobs, retention=RETENTION, now=utcnow) == 1
    b = await _batch(pool, batch_id)
    assert b.status == "completed" and b.finalizing_at and b.completed_at
    out = await _content(pool, blobs, b.output_file_id)
    err = await _content(pool, blobs, b.error_file_id)
    assert [r["custom_id"] for r in out] == ["req-0", "req-1", "req-2"]
    assert [r["response"]["status_code"] for r in err] == [400]
    assert (b.total_count, b.completed_count, b.failed_count) == (4, 3, 1)
    assert (b.input_tokens, b.output_tokens) == (8, 12)
    assert out[0]["response"]["body"] == {"n": 0} and out[0]["error"] is None


async def test_expired_batch_keeps_finished_work_and_lists_the_rest_as_expired(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    batch_id = await _setup(pool, blobs, 5, window="2s")
    claimed = await _claim(pool, 3)
    await _record(
        pool,
        [
            Outcome(
                claimed[0].id,
                claimed[0].attempt,
                "completed",
                response_status=200,
                response_body={},
            )
        ],
    )
    later = utcnow() + timedelta(seconds=5)
    registry = CollectorRegistry()
    metrics = SchedulerMetrics(registry)
    assert (
        await finish_ready(pool, blobs, retention=RETENTION, now=lambda: later, metrics=metrics)
        == 1
    )
    b = await _batch(pool, batch_id)
    assert b.status == "expired" and b.expired_at is not None
    assert registry.get_sample_value("inferbatch_deadline_misses_total") == 1
    assert (
        registry.get_sample_value("inferbatch_batches_finished_total", {"status": "expired"}) == 1
    )
    expired = {"status": "expired", "endpoint": "/v1/chat/completions", "model": "sim-model"}
    assert registry.get_sample_value("inferbatch_requests_total", {**expired, "pool": "spot"}) == 4
    out = await _content(pool, blobs, b.output_file_id)
    err = await _content(pool, blobs, b.error_file_id)
    assert [r["custom_id"] for r in out] == ["req-0"]
    assert sorted(r["custom_id"] for r in err) == ["req-1", "req-2", "req-3", "req-4"]
    assert {r["error"]["code"] for r in err} == {"batch_expired"}
    # a worker still running an expired request cannot complete it afterwards
    late = claimed[1]
    assert (
        await _record(pool, [Outcome(late.id, late.attempt, "completed", response_status=200)])
        == set()
    )
    assert (b.total_count, b.completed_count, b.failed_count) == (5, 1, 4)


async def test_cancelled_batch_waits_for_running_requests_then_lists_the_rest(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    batch_id = await _setup(pool, blobs, 4)
    [running] = await _claim(pool, 1)
    async with pool.connection() as conn:
        assert await batches.request_cancel(conn, batch_id, utcnow())
        assert not await batches.request_cancel(conn, batch_id, utcnow())
        assert queue.total(await queue.cancel_queued(conn)) == 3
    assert await finish_ready(pool, blobs, retention=RETENTION, now=utcnow) == 0
    assert await _record(
        pool,
        [Outcome(running.id, running.attempt, "completed", response_status=200, response_body={})],
    ) == {running.id}
    assert await finish_ready(pool, blobs, retention=RETENTION, now=utcnow) == 1
    b = await _batch(pool, batch_id)
    assert b.status == "cancelled" and b.cancelled_at and b.cancelling_at
    out = await _content(pool, blobs, b.output_file_id)
    err = await _content(pool, blobs, b.error_file_id)
    assert [r["custom_id"] for r in out] == ["req-0"]
    assert [r["error"]["code"] for r in err] == ["batch_cancelled"] * 3
    assert (b.total_count, b.completed_count, b.failed_count) == (4, 1, 3)


async def test_a_counter_fold_racing_a_finish_keeps_the_final_counts(
    pool: Pool, tmp_path: Path
) -> None:
    """A fold skips a batch whose row a finisher holds (it neither waits nor adds the
    batch's deltas on top of the final counts), and the finisher folds that batch's deltas
    itself, so nothing is counted twice or lost from the totals."""
    blobs = LocalBlobStore(tmp_path)
    batch_id = await _setup(pool, blobs, 4)
    [done] = await _claim(pool, 1)
    await _record(
        pool, [Outcome(done.id, done.attempt, "completed", response_status=200, response_body={})]
    )
    async with pool.connection() as conn:
        assert await batches.request_cancel(conn, batch_id, utcnow())
        assert queue.total(await queue.cancel_queued(conn)) == 3
    async with pool.connection() as finisher, pool.connection() as folder:
        async with finisher.transaction():
            assert await batches.lock_for_finish(finisher, batch_id) is not None
            # another fold meanwhile: the batch is skipped at once, its deltas stay
            assert await counters.fold(folder, [batch_id]) == 0
            await folder.commit()
            assert await counters.fold(finisher, [batch_id]) > 0
            assert await batches.mark_finished(
                finisher,
                batch_id,
                status="cancelled",
                now=utcnow(),
                output_file_id=None,
                error_file_id=None,
                counts=(4, 1, 3),
                tokens=(0, 0, 0, 0),
            )
        assert await counters.fold(folder, [batch_id]) == 0  # nothing left to add
        totals = {(r["status"], r["pool"]): r["n"] for r in await counters.request_totals(folder)}
    b = await _batch(pool, batch_id)
    assert (b.status, b.total_count, b.completed_count, b.failed_count) == ("cancelled", 4, 1, 3)
    assert totals == {("completed", "spot"): 1, ("cancelled", "spot"): 3}


async def test_a_retry_while_finalizing_sends_the_batch_back_to_in_progress(
    pool: Pool, tmp_path: Path
) -> None:
    from inferbatch.scheduler.finalize import finish_batch
    from inferbatch.services.requests import retry_request

    blobs = LocalBlobStore(tmp_path)
    batch_id = await _setup(pool, blobs, 2)
    a, b = await _claim(pool, 2)
    await _record(
        pool,
        [
            Outcome(a.id, a.attempt, "completed", response_status=200),
            Outcome(b.id, b.attempt, "failed", response_status=400),
        ],
    )
    async with pool.connection() as conn:
        assert await batches.mark_finalizing(conn, batch_id, utcnow())
        user = await make_user(pool)  # the same owner: ensure_user returns alice
        from inferbatch.ids import request_public_id

        await retry_request(conn, user, request_public_id(b.id), utcnow())
    assert (await _batch(pool, batch_id)).status == "in_progress"
    # the finalizer, had it been between its two steps, steps back too
    async with pool.connection() as conn:
        await conn.execute("UPDATE batches SET status = 'finalizing' WHERE id = %s", (batch_id,))
    assert not await finish_batch(
        pool, blobs, batch_id, "completed", retention=RETENTION, now=utcnow
    )
    after = await _batch(pool, batch_id)
    assert after.status == "in_progress" and after.output_file_id is None
