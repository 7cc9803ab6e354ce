"""Counters that move as requests settle: batch request counts, escalations, totals."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import batches, browse, counters
from inferbatch.db import requests as queue
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.domain import BatchRecord
from inferbatch.scheduler.ingest import ingest_next
from tests.helpers import chat_file, chat_line
from tests.integration.fixtures import fold_counters, make_batch, make_user, utcnow

pytestmark = pytest.mark.integration


async def _queued(pool: Pool, blobs: LocalBlobStore, content: bytes, **kw: object) -> str:
    user = await make_user(pool)
    batch = await make_batch(pool, blobs, user, content, **kw)  # type: ignore[arg-type]
    assert await ingest_next(pool, blobs, max_requests=100_000, now=utcnow) == batch.id
    return batch.id


async def _batch(pool: Pool, batch_id: str) -> BatchRecord:
    async with pool.connection() as conn:
        b = await batches.get(conn, batch_id, None)
    assert b is not None
    return b


async def _claim(pool: Pool, n: int) -> list[queue.ClaimedRequest]:
    async with pool.connection() as conn:
        return await queue.claim(conn, pool="spot", owner="w", n=n)


async def _record(pool: Pool, outcomes: list[Outcome]) -> set[int]:
    async with pool.connection() as conn:
        return await queue.record_outcomes(conn, "w", outcomes)


async def test_batch_counts_follow_settled_requests_without_a_recount(
    pool: Pool, tmp_path: Path
) -> None:
    batch_id = await _queued(pool, LocalBlobStore(tmp_path), chat_file(4))
    a, b, c, _ = await _claim(pool, 4)
    await _record(
        pool,
        [
            Outcome(
                a.id,
                a.attempt,
                "completed",
                response_status=200,
                response_body={},
                prompt_tokens=3,
                completion_tokens=4,
            ),
            Outcome(b.id, b.attempt, "completed", response_status=200, response_body={}),
            Outcome(c.id, c.attempt, "failed", response_status=400, response_body={}),
        ],
    )
    before = await _batch(pool, batch_id)
    assert (before.completed_count, before.failed_count) == (0, 0)  # not folded yet
    await fold_counters(pool)
    after = await _batch(pool, batch_id)
    assert (after.completed_count, after.failed_count) == (2, 1)
    assert (after.input_tokens, after.output_tokens) == (3, 4)
    # a user's retry of the failed request takes it out of the failed count again
    async with pool.connection() as conn:
        assert await queue.requeue_failed(conn, batch_id) == 1
    await fold_counters(pool)
    assert (await _batch(pool, batch_id)).failed_count == 0
    async with pool.connection() as conn:
        totals = {(r["status"], r["pool"]): r["n"] for r in await counters.request_totals(conn)}
        by_status, ingested = await counters.batch_totals(conn)
    assert totals == {("completed", "spot"): 2}
    assert by_status == {"in_progress": 1} and ingested == 4


async def test_an_escalation_on_retry_is_counted_in_the_batch(pool: Pool, tmp_path: Path) -> None:
    """Every path that moves a request to dedicated counts it: here a retry after an
    engine error (once only the scheduler's moves were counted)."""
    batch_id = await _queued(pool, LocalBlobStore(tmp_path), chat_file(2))
    a, b = await _claim(pool, 2)
    accepted = await _record(
        pool,
        [
            Outcome(a.id, a.attempt, "retry", error={"code": "x"}, escalate="retried on spot"),
            Outcome(b.id, b.attempt, "retry", error={"code": "x"}),
        ],
    )
    assert accepted == {a.id, b.id}
    await fold_counters(pool)
    assert (await _batch(pool, batch_id)).escalated_count == 1
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id, pool, escalation_reason FROM requests ORDER BY id")
        rows = await cur.fetchall()
    assert [(r["pool"], r["escalation_reason"]) for r in rows] == [
        ("dedicated", "retried on spot"),
        ("spot", None),
    ]


async def test_a_release_that_escalates_is_counted_once(pool: Pool, tmp_path: Path) -> None:
    batch_id = await _queued(pool, LocalBlobStore(tmp_path), chat_file(1))
    [a] = await _claim(pool, 1)
    rows = [queue.Requeue(a.id, attempt=a.attempt, owner="w", interrupted=True, escalate="lost")]
    async with pool.connection() as conn:
        first = await queue.requeue(conn, ("running",), rows)
        again = await queue.requeue(conn, ("running",), rows)  # fenced: no longer running
    assert first.escalated == {"lost": 1} and again.n == 0
    await fold_counters(pool)
    assert (await _batch(pool, batch_id)).escalated_count == 1


async def test_followers_waiting_on_a_leader_are_not_counted_as_deduplicated(
    pool: Pool, tmp_path: Path
) -> None:
    same = chat_line("x", "the same question")
    lines = [same.replace('"x"', f'"x-{i}"') for i in range(3)]
    batch_id = await _queued(pool, LocalBlobStore(tmp_path), ("\n".join(lines) + "\n").encode())
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status, count(*) AS n FROM requests WHERE batch_id = %s GROUP BY status",
            (batch_id,),
        )
        assert {r["status"]: r["n"] for r in await cur.fetchall()} == {"queued": 1, "waiting": 2}
        breakdown = await browse.pool_breakdown(conn, batch_id)
    assert sum(r["deduplicated"] for r in breakdown) == 0
