"""The queue: claim order, SKIP LOCKED between claimers, fencing, rescue, release."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import requests as queue
from inferbatch.db import workers as registry
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.scheduler.ingest import ingest_next
from tests.helpers import chat_file
from tests.integration.fixtures import REQUESTS_JOINED, make_batch, make_user, utcnow

pytestmark = pytest.mark.integration


async def _queued_batch(pool: Pool, blobs: LocalBlobStore, n: int, **kw: object) -> str:
    user = await make_user(pool)
    batch = await make_batch(
        pool,
        blobs,
        user,
        chat_file(n, prefix=str(kw.get("prefix", "r"))),
        **{k: v for k, v in kw.items() if k != "prefix"},
    )  # type: ignore[arg-type]
    assert await ingest_next(pool, blobs, max_requests=100_000, now=utcnow) == batch.id
    return batch.id


async def _claim(pool: Pool, owner: str, n: int, pool_name: str = "spot"):
    async with pool.connection() as conn:
        return await queue.claim(conn, pool=pool_name, owner=owner, n=n)


async def _rescue(pool: Pool, stale_seconds: float = 30.0) -> queue.Requeued:
    """The leader's rescue: the requests of workers not live go back to the queue."""
    async with pool.connection() as conn:
        lost = await queue.lost_claims(conn, stale_seconds)
        return await queue.requeue(
            conn,
            ("running",),
            [
                queue.Requeue(c.request_id, attempt=c.attempt, owner=c.owner, interrupted=True)
                for c in lost
            ],
        )


async def test_claim_orders_by_priority_then_deadline_then_id(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    now = utcnow()
    # identical bodies across the batches: dedup off, or they would follow each other
    old_normal = await _queued_batch(
        pool,
        blobs,
        3,
        prefix="old",
        created_at=now - timedelta(hours=1),
        metadata={"dedup": "off"},
    )
    new_normal = await _queued_batch(
        pool, blobs, 3, prefix="new", created_at=now, metadata={"dedup": "off"}
    )
    high = await _queued_batch(
        pool, blobs, 3, prefix="high", created_at=now, metadata={"priority": "10", "dedup": "off"}
    )
    claimed = await _claim(pool, "w1", 7)
    assert [c.batch_id for c in claimed] == [high] * 3 + [old_normal] * 3 + [new_normal]
    assert [c.custom_id for c in claimed[:3]] == ["high-0", "high-1", "high-2"]
    assert all(c.attempt == 1 for c in claimed)
    assert await _claim(pool, "w1", 7, pool_name="dedicated") == []


async def test_a_short_window_created_later_is_claimed_before_a_long_one(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    now = utcnow()
    off = {"dedup": "off"}
    day = await _queued_batch(
        pool, blobs, 2, prefix="day", created_at=now - timedelta(minutes=10), metadata=off
    )
    hour = await _queued_batch(
        pool, blobs, 2, prefix="hour", created_at=now, window="1h", metadata=off
    )
    claimed = await _claim(pool, "w1", 4)
    assert [c.batch_id for c in claimed] == [hour, hour, day, day]


async def _cursor_claim(cursor: queue.QueueCursor, pool: Pool, n: int) -> list[str]:
    async with pool.connection() as conn:
        got = await cursor.claim(conn, owner="w", n=n)
    return [c.custom_id for c in got]


async def test_a_cursor_resumes_after_its_last_claim_and_rescans_for_what_lies_before(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _queued_batch(pool, blobs, 10, prefix="a", metadata={"dedup": "off"})
    now = [0.0]  # the cursor's clock: claims take no time, rescans come when told
    cursor = queue.QueueCursor("spot", rescan_seconds=60, clock=lambda: now[0])
    assert await _cursor_claim(cursor, pool, 3) == ["a-0", "a-1", "a-2"]
    # a released request sits before the cursor: resumed claims pass it by ...
    async with pool.connection() as conn:
        [first] = await (
            await conn.execute(f"SELECT id FROM {REQUESTS_JOINED} WHERE custom_id = 'a-0'")
        ).fetchall()
        released = await queue.requeue(
            conn, ("running",), [queue.Requeue(first["id"], attempt=1, owner="w")]
        )
        assert released.n == 1
    assert await _cursor_claim(cursor, pool, 3) == ["a-3", "a-4", "a-5"]
    # ... and so does a batch of higher priority, until the rescan
    await _queued_batch(pool, blobs, 2, prefix="hi", metadata={"priority": "10", "dedup": "off"})
    assert await _cursor_claim(cursor, pool, 2) == ["a-6", "a-7"]
    now[0] += 60
    assert await _cursor_claim(cursor, pool, 1) == ["hi-0"]
    assert await _cursor_claim(cursor, pool, 2) == ["hi-1", "a-0"]
    # a resumed claim that comes up short finishes from the start of the queue
    assert await _cursor_claim(cursor, pool, 5) == ["a-8", "a-9"]
    assert await _cursor_claim(cursor, pool, 5) == []


async def test_concurrent_claimers_never_get_the_same_request(pool: Pool, tmp_path: Path) -> None:
    await _queued_batch(pool, LocalBlobStore(tmp_path), 600)

    async def claimer(name: str) -> list[int]:
        got: list[int] = []
        while batch := await _claim(pool, name, 25):
            got += [c.id for c in batch]
        return got

    results = await asyncio.gather(*(claimer(f"w{i}") for i in range(4)))
    all_ids = [i for r in results for i in r]
    assert len(all_ids) == 600 == len(set(all_ids))
    assert sum(1 for r in results if r) >= 2


async def test_a_result_from_a_lost_lease_cannot_overwrite_a_newer_attempt(
    pool: Pool, tmp_path: Path
) -> None:
    await _queued_batch(pool, LocalBlobStore(tmp_path), 1)
    [first] = await _claim(pool, "old-worker", 1)  # a worker that never beats
    assert (await _rescue(pool)).ids == {first.id}
    [second] = await _claim(pool, "new-worker", 1)
    assert second.id == first.id and second.attempt == first.attempt + 1
    stale = Outcome(
        first.id, first.attempt, "completed", response_status=200, response_body={"stale": True}
    )
    fresh = Outcome(
        second.id, second.attempt, "completed", response_status=200, response_body={"fresh": True}
    )
    async with pool.connection() as conn:
        assert await queue.record_outcomes(conn, "old-worker", [stale]) == set()
        # even the right owner name with the old attempt number is refused
        assert await queue.record_outcomes(conn, "new-worker", [stale]) == set()
        assert await queue.record_outcomes(conn, "new-worker", [fresh]) == {first.id}
        assert await queue.record_outcomes(conn, "new-worker", [fresh]) == set()
        cur = await conn.execute(
            f"SELECT status, response_body::json FROM {REQUESTS_JOINED} WHERE id = %s", (first.id,)
        )
        row = await cur.fetchone()
    assert row == {"status": "completed", "response_body": {"fresh": True}}


async def test_grouped_outcomes_write_completed_failed_and_retry(
    pool: Pool, tmp_path: Path
) -> None:
    await _queued_batch(pool, LocalBlobStore(tmp_path), 3)
    a, b, c = await _claim(pool, "w", 3)
    outcomes = [
        Outcome(
            a.id,
            a.attempt,
            "completed",
            response_status=200,
            response_body={"x": 1},
            prompt_tokens=5,
            completion_tokens=7,
        ),
        Outcome(b.id, b.attempt, "failed", response_status=400, response_body={"error": {}}),
        Outcome(
            c.id,
            c.attempt,
            "retry",
            error={"code": "engine_timeout", "message": "t"},
            retry_after=60,
        ),
    ]
    async with pool.connection() as conn:
        assert await queue.record_outcomes(conn, "w", outcomes) == {a.id, b.id, c.id}
        cur = await conn.execute(
            f"""SELECT id, status, failed_attempts, prompt_tokens, lease_owner,
                      next_attempt_at > now() + interval '50 seconds' AS delayed
               FROM {REQUESTS_JOINED} ORDER BY id"""
        )
        rows = {r["id"]: r for r in await cur.fetchall()}
    assert rows[a.id]["status"] == "completed" and rows[a.id]["prompt_tokens"] == 5
    assert rows[b.id]["status"] == "failed" and rows[b.id]["failed_attempts"] == 1
    assert rows[c.id]["status"] == "queued" and rows[c.id]["delayed"]
    assert rows[c.id]["lease_owner"] is None
    assert await _claim(pool, "w", 3) == []  # the retry waits for its backoff


async def test_results_are_stored_exactly_as_the_engine_sent_them(
    pool: Pool, tmp_path: Path
) -> None:
    """Bodies with quotes, backslashes, non-ASCII and even NUL characters (which jsonb
    refuses) survive the grouped write unchanged; a failure without a body stores none."""
    await _queued_batch(pool, LocalBlobStore(tmp_path), 2)
    a, b = await _claim(pool, "w", 2)
    body = {"text": 'say "hi"\\ \u00e9t\u00e9 \u2603 a\x00b', "n": 1.5, "list": [None, True]}
    error = {"code": "engine_error", "message": '"quoted" \\ back'}
    outcomes = [
        Outcome(a.id, a.attempt, "completed", response_status=200, response_body=body),
        Outcome(b.id, b.attempt, "failed", error=error),
    ]
    async with pool.connection() as conn:
        assert await queue.record_outcomes(conn, "w", outcomes) == {a.id, b.id}
        cur = await conn.execute(
            f"SELECT id, response_body::text AS body, error FROM {REQUESTS_JOINED} ORDER BY id"
        )
        rows = {r["id"]: r for r in await cur.fetchall()}
    assert json.loads(rows[a.id]["body"]) == body
    assert rows[b.id]["body"] is None and rows[b.id]["error"] == error


async def test_a_live_workers_beat_keeps_its_requests_and_a_silent_ones_go_back(
    pool: Pool, tmp_path: Path
) -> None:
    await _queued_batch(pool, LocalBlobStore(tmp_path), 3)
    async with pool.connection() as conn:
        await registry.register(conn, worker_id="w", pool="spot", host="h", pid=1)
    claimed = await _claim(pool, "w", 2)
    assert (await _rescue(pool)).n == 0  # it beats: its leases hold
    async with pool.connection() as conn:
        await conn.execute("UPDATE workers SET heartbeat_at = now() - interval '1 minute'")
        assert len(await queue.lost_claims(conn, 30)) == 2
        await registry.heartbeat(conn, "w", state="running", in_flight=2)  # one beat: all held
        assert await queue.lost_claims(conn, 30) == []
        await registry.heartbeat(conn, "w", state="stopped", in_flight=0)
    rescued = await _rescue(pool)  # a stopped worker holds nothing
    assert rescued.ids == {c.id for c in claimed}
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT sum(interruptions) AS n, count(*) FILTER (WHERE status = 'queued') AS q "
            f"FROM {REQUESTS_JOINED}"
        )
        row = await cur.fetchone()
    assert row == {"n": 2, "q": 3}
    again = await _claim(pool, "w2", 5)
    assert {c.id for c in claimed} <= {c.id for c in again}


async def test_a_heartbeat_writes_the_worker_row_only(pool: Pool, tmp_path: Path) -> None:
    """Liveness costs one row per worker: a beat leaves every claimed request untouched."""
    await _queued_batch(pool, LocalBlobStore(tmp_path), 4)
    async with pool.connection() as conn:
        await registry.register(conn, worker_id="w", pool="spot", host="h", pid=1)
    await _claim(pool, "w", 4)
    async with pool.connection() as conn:
        before = await (await conn.execute("SELECT id, xmin::text AS x FROM requests")).fetchall()
        await registry.heartbeat(conn, "w", state="running", in_flight=4)
        after = await (await conn.execute("SELECT id, xmin::text AS x FROM requests")).fetchall()
    assert sorted(before, key=lambda r: r["id"]) == sorted(after, key=lambda r: r["id"])


async def test_claims_and_results_never_rewrite_the_input_and_results_are_written_once(
    pool: Pool, tmp_path: Path
) -> None:
    """The body is written once at ingest: claims, retries and completions update only the
    narrow queue row, and a settled request has exactly one result row."""
    await _queued_batch(pool, LocalBlobStore(tmp_path), 3)
    inputs = "SELECT id, xmin::text AS x FROM request_inputs ORDER BY id"
    async with pool.connection() as conn:
        before = await (await conn.execute(inputs)).fetchall()
    a, b, c = await _claim(pool, "w", 3)
    async with pool.connection() as conn:
        await queue.record_outcomes(
            conn,
            "w",
            [
                Outcome(a.id, a.attempt, "completed", response_status=200, response_text='{"k":1}'),
                Outcome(b.id, b.attempt, "retry", error={"code": "x", "message": "m"}),
                Outcome(c.id, c.attempt, "failed", response_status=400, response_body={"e": 1}),
            ],
        )
    [b2] = await _claim(pool, "w", 1)
    async with pool.connection() as conn:
        await queue.record_outcomes(
            conn, "w", [Outcome(b2.id, b2.attempt, "completed", response_status=200)]
        )
        after = await (await conn.execute(inputs)).fetchall()
        cur = await conn.execute(
            "SELECT request_id, status, attempt, response_body FROM request_results "
            "ORDER BY request_id"
        )
        results = await cur.fetchall()
    assert before == after
    assert [(r["request_id"], r["status"], r["attempt"]) for r in results] == [
        (a.id, "completed", 1),
        (b.id, "completed", 2),
        (c.id, "failed", 1),
    ]
    assert results[0]["response_body"] == '{"k":1}'  # the text as given, not re-rendered


async def test_workers_stopped_long_ago_are_forgotten_and_their_requests_still_go_back(
    pool: Pool, tmp_path: Path
) -> None:
    await _queued_batch(pool, LocalBlobStore(tmp_path), 1)
    async with pool.connection() as conn:
        for name, state in (("old", "stopped"), ("live", "running"), ("recent", "stopped")):
            await registry.register(conn, worker_id=name, pool="spot", host="h", pid=1)
            await registry.heartbeat(conn, name, state=state, in_flight=0)
        await conn.execute(
            "UPDATE workers SET heartbeat_at = now() - interval '8 days' WHERE id = 'old'"
        )
    [held] = await _claim(pool, "old", 1)
    async with pool.connection() as conn:
        assert await registry.prune(conn, 7 * 86400) == 1
        cur = await conn.execute("SELECT id FROM workers ORDER BY id")
        assert [r["id"] for r in await cur.fetchall()] == ["live", "recent"]
    assert (await _rescue(pool)).ids == {held.id}  # an owner that is gone is not live
