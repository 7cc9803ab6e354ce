"""Deduplication statements on real PostgreSQL: followers, failed leaders, scopes."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import dedup
from inferbatch.db import requests as queue
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.scheduler.ingest import ingest_next
from tests.helpers import chat_line
from tests.integration.fixtures import REQUESTS_JOINED, make_batch, make_user, utcnow

pytestmark = pytest.mark.integration


async def _statuses(pool: Pool) -> dict[str, tuple[str, bool]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT custom_id, status, dedup_of IS NOT NULL AS dup FROM {REQUESTS_JOINED}"
        )
        return {r["custom_id"]: (r["status"], r["dup"]) for r in await cur.fetchall()}


async def test_followers_of_a_failed_leader_run_themselves(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    content = "\n".join(chat_line(f"c{i}", "same question") for i in range(3)).encode()
    await make_batch(pool, blobs, user, content)
    await ingest_next(pool, blobs, max_requests=10, now=utcnow)
    assert await _statuses(pool) == {
        "c0": ("queued", False),
        "c1": ("waiting", True),
        "c2": ("waiting", True),
    }
    async with pool.connection() as conn:
        [leader] = await queue.claim(conn, pool="spot", owner="w", n=10)
        assert leader.custom_id == "c0"  # followers are never claimed
        await queue.record_outcomes(
            conn, "w", [Outcome(leader.id, leader.attempt, "failed", response_status=400)]
        )
        assert await dedup.settle_followers(conn) == ([], 2)
    assert await _statuses(pool) == {
        "c0": ("failed", False),
        "c1": ("queued", False),
        "c2": ("queued", False),
    }


async def test_followers_copy_a_successful_leader(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    content = "\n".join(chat_line(f"c{i}", "same question") for i in range(3)).encode()
    await make_batch(pool, blobs, user, content)
    await ingest_next(pool, blobs, max_requests=10, now=utcnow)
    async with pool.connection() as conn:
        [leader] = await queue.claim(conn, pool="spot", owner="w", n=10)
        await queue.record_outcomes(
            conn,
            "w",
            [
                Outcome(
                    leader.id,
                    leader.attempt,
                    "completed",
                    response_status=200,
                    response_body={"answer": 42},
                    prompt_tokens=3,
                    completion_tokens=4,
                )
            ],
        )
        done, requeued = await dedup.settle_followers(conn)
        assert (queue.total(done), requeued) == (2, 0)
        assert {t.pool for t in done} == {"none"}
        cur = await conn.execute(
            f"SELECT response_body::json, prompt_tokens FROM {REQUESTS_JOINED} "
            "WHERE custom_id = 'c2'"
        )
        assert await cur.fetchone() == {"response_body": {"answer": 42}, "prompt_tokens": 3}


async def test_a_batch_of_identical_lines_has_one_leader(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    content = "\n".join(chat_line(f"c{i}", "same") for i in range(3000)).encode()
    await make_batch(pool, blobs, user, content)
    await ingest_next(pool, blobs, max_requests=5000, now=utcnow)
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status, count(*) AS n, count(DISTINCT dedup_of) AS leaders "
            f"FROM {REQUESTS_JOINED} "
            "GROUP BY status ORDER BY status"
        )
        rows = await cur.fetchall()
    assert rows == [
        {"status": "queued", "n": 1, "leaders": 0},
        {"status": "waiting", "n": 2999, "leaders": 1},
    ]
