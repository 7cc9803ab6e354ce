"""Retention: a finished batch's request rows go in bounded steps once their time comes;
the batch stays listed, live work is never touched, and deduplication reuses only outputs
within its horizon."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import batches, retention
from inferbatch.db import requests as queue
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.scheduler.finalize import finish_ready
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services.serialize import batch_object
from tests.helpers import chat_file, chat_line
from tests.integration.fixtures import make_batch, make_user, utcnow

pytestmark = pytest.mark.integration

DAY = timedelta(days=1)


async def _rows(pool: Pool, batch_id: str) -> tuple[int, int, int]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            """
            SELECT (SELECT count(*) FROM request_inputs WHERE batch_id = %(b)s) AS inputs,
                (SELECT count(*) FROM requests WHERE batch_id = %(b)s) AS queue,
                (SELECT count(*) FROM request_results WHERE batch_id = %(b)s) AS results
            """,
            {"b": batch_id},
        )
        row = await cur.fetchone()
    assert row is not None
    return row["inputs"], row["queue"], row["results"]


async def _run_all(pool: Pool, owner: str = "w") -> None:
    async with pool.connection() as conn:
        claimed = await queue.claim(conn, pool="spot", owner=owner, n=100)
        await queue.record_outcomes(
            conn,
            owner,
            [Outcome(c.id, c.attempt, "completed", response_status=200) for c in claimed],
        )


async def test_a_finished_batch_loses_its_request_rows_in_steps_and_stays_listed(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    done = await make_batch(pool, blobs, user, chat_file(5))
    await ingest_next(pool, blobs, max_requests=100, now=utcnow)
    await _run_all(pool)
    assert (
        await finish_ready(
            pool, blobs, retention=30 * DAY, now=utcnow, request_retention=timedelta(hours=1)
        )
        == 1
    )
    live = await make_batch(pool, blobs, user, chat_file(3, model="other-model"))
    await ingest_next(pool, blobs, max_requests=100, now=utcnow)

    async with pool.connection() as conn:
        due = batch_object(await batches.get(conn, done.id, None))  # type: ignore[arg-type]
        assert due.requests_expire_at is not None and due.requests_pruned_at is None
        # not due yet: nothing happens
        assert await retention.prune_step(conn, utcnow()) == retention.Pruned(None, 0, False)
        later = utcnow() + timedelta(hours=2)
        steps = []
        while (step := await retention.prune_step(conn, later, limit=2)).batch_id is not None:
            steps.append((step.requests, step.finished))
            await conn.commit()
        b = await batches.get(conn, done.id, None)
    assert steps == [(2, False), (2, False), (1, True)]
    assert await _rows(pool, done.id) == (0, 0, 0)
    assert await _rows(pool, live.id) == (3, 3, 0)  # live work untouched
    assert b is not None and b.status == "completed" and b.completed_count == 5
    assert b.output_file_id is not None
    shown = batch_object(b)  # the API says why its request list is empty
    assert shown.requests_expire_at is None and shown.requests_pruned_at is not None


async def test_by_default_rows_are_kept_as_long_as_the_output_file(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    batch = await make_batch(pool, blobs, user, chat_file(2))
    await ingest_next(pool, blobs, max_requests=100, now=utcnow)
    await _run_all(pool)
    assert await finish_ready(pool, blobs, retention=3 * DAY, now=utcnow) == 1
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT b.requests_expire_at, f.expires_at FROM batches b "
            "JOIN files f ON f.id = b.output_file_id WHERE b.id = %s",
            (batch.id,),
        )
        row = await cur.fetchone()
        assert row is not None and row["requests_expire_at"] == row["expires_at"]
        assert (await retention.prune_step(conn, utcnow() + 2 * DAY)).batch_id is None
        step = await retention.prune_step(conn, utcnow() + 4 * DAY)
    assert step == retention.Pruned(batch.id, 2, True)


async def test_deduplication_reuses_only_outputs_within_its_horizon(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    line = chat_line("q", "the same question").encode()
    await make_batch(pool, blobs, user, line)
    await ingest_next(pool, blobs, max_requests=10, now=utcnow)
    await _run_all(pool)
    async with pool.connection() as conn:
        await conn.execute("UPDATE request_results SET finished_at = now() - interval '2 days'")

    await make_batch(pool, blobs, user, line)
    await ingest_next(pool, blobs, max_requests=10, now=utcnow, dedup_horizon_seconds=86400)
    await make_batch(pool, blobs, user, line)
    await ingest_next(pool, blobs, max_requests=10, now=utcnow, dedup_horizon_seconds=3 * 86400)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT status, dedup_of FROM requests ORDER BY id")
        rows = [(r["status"], r["dedup_of"] is not None) for r in await cur.fetchall()]
    # the second batch is past the one-day horizon and runs; the third reuses the first
    assert rows == [("completed", False), ("queued", False), ("completed", True)]
