"""``GET /v1/batches/{id}/output``: settled lines in settle order, a cursor that never
skips a result whatever order transactions commit in, and the end of the stream."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import requests as queue
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.domain import ClaimedRequest, Principal
from inferbatch.errors import InvalidRequest, NotFound
from inferbatch.scheduler.finalize import finish_ready
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services.output import OutputPage, output_page
from tests.helpers import chat_file
from tests.integration.fixtures import make_batch, make_project, make_user, utcnow

pytestmark = pytest.mark.integration


def _done(c: ClaimedRequest) -> Outcome:
    return Outcome(
        c.id, c.attempt, "completed", response_status=200, response_body={"answer": c.custom_id}
    )


async def _page(
    pool: Pool, user: Principal, batch_id: str, after: str | None, n: int
) -> OutputPage:
    async with pool.connection() as conn:
        return await output_page(conn, user, batch_id, after, n)


def _ids(page: OutputPage) -> list[str]:
    return [orjson.loads(line)["custom_id"] for line in page.lines]


async def test_the_cursor_reads_every_result_once_even_when_an_older_transaction_commits_last(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    batch = await make_batch(pool, blobs, user, chat_file(5))
    await ingest_next(pool, blobs, max_requests=100, now=utcnow)
    async with pool.connection() as conn:
        claimed = {c.custom_id: c for c in await queue.claim(conn, pool="spot", owner="w", n=5)}
    assert len(claimed) == 5

    # settled out of line order, in three transactions
    for custom_id in ("req-3", "req-0", "req-4"):
        async with pool.connection() as conn:
            await queue.record_outcomes(conn, "w", [_done(claimed[custom_id])])
    first = await _page(pool, user, batch.id, None, 2)
    assert _ids(first) == ["req-3", "req-0"] and not first.complete
    assert orjson.loads(first.lines[0])["response"]["body"] == {"answer": "req-3"}

    # req-1 is written by a transaction that stays open while a later one (req-2) commits
    async with pool.connection() as slow:
        await queue.record_outcomes(slow, "w", [_done(claimed["req-1"])])
        async with pool.connection() as fast:
            await queue.record_outcomes(fast, "w", [_done(claimed["req-2"])])
        held = await _page(pool, user, batch.id, first.next_after, 10)
        # req-2 settled after req-1's transaction began: it waits for it, else req-1
        # (which sorts before it) would be skipped by a client following the cursor
        assert _ids(held) == ["req-4"]
    rest = await _page(pool, user, batch.id, held.next_after, 10)
    assert _ids(rest) == ["req-1", "req-2"]
    assert not rest.complete and rest.status == "in_progress"

    # nothing new: the same cursor comes back
    again = await _page(pool, user, batch.id, rest.next_after, 10)
    assert again.lines == [] and again.next_after == rest.next_after

    assert await finish_ready(pool, blobs, retention=timedelta(days=1), now=utcnow) == 1
    end = await _page(pool, user, batch.id, rest.next_after, 10)
    assert end.lines == [] and end.complete and end.status == "completed"
    whole = await _page(pool, user, batch.id, None, 3)
    assert len(whole.lines) == 3 and not whole.complete  # ended, but more lines follow


async def test_another_projects_batch_and_a_forged_cursor_are_refused(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool, "alice")
    bob = await make_user(pool, "bob", project_id=await make_project(pool))
    batch = await make_batch(pool, blobs, alice, chat_file(1))
    with pytest.raises(NotFound):
        await _page(pool, bob, batch.id, None, 10)
    # a fellow member of alice's project reads it (nothing settled yet)
    assert (await _page(pool, await make_user(pool, "carol"), batch.id, None, 10)).lines == []
    with pytest.raises(InvalidRequest) as exc:
        await _page(pool, alice, batch.id, "batch_req_0001", 10)
    assert exc.value.param == "after"
