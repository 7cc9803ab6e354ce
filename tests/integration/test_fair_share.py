"""Fair share: at equal priority the spot pool's claim serves projects by weight; the
dedicated pool and a single project keep the plain claim order."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import requests as queue
from inferbatch.db.types import Pool
from inferbatch.domain import DEFAULT_PROJECT_ID, ClaimedRequest
from inferbatch.scheduler.ingest import ingest_next
from tests.helpers import chat_file
from tests.integration.fixtures import make_batch, make_project, make_user, utcnow

pytestmark = pytest.mark.integration

N = 5
"""Requests per claim."""


async def _queue(
    pool: Pool, blobs: LocalBlobStore, project: str, n: int, tag: str, **meta: str
) -> str:
    user = await make_user(pool, f"user-{project}", project_id=project)
    content = chat_file(n, prefix=tag)
    batch = await make_batch(pool, blobs, user, content, metadata={"dedup": "off", **meta})
    assert await ingest_next(pool, blobs, max_requests=100_000, now=utcnow) == batch.id
    return batch.id


def _cursor() -> queue.QueueCursor:
    """A worker's spot cursor that reads the active projects (and rescans) before every
    claim: a rescan interval of 0 on a clock that stands still."""
    return queue.QueueCursor("spot", rescan_seconds=0, clock=lambda: 0.0)


async def _claim(pool: Pool, cursor: queue.QueueCursor, n: int = N) -> list[ClaimedRequest]:
    async with pool.connection() as conn:
        return await cursor.claim(conn, owner="w1", n=n)


async def _by_project(pool: Pool, claimed: list[ClaimedRequest]) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, project_id FROM requests WHERE id = ANY(%s)", ([c.id for c in claimed],)
        )
        project = {r["id"]: r["project_id"] for r in await cur.fetchall()}
    return [project[c.id] for c in claimed]


async def _rounds(pool: Pool, cursor: queue.QueueCursor, rounds: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(rounds):
        counts.update(await _by_project(pool, await _claim(pool, cursor)))
    return counts


async def test_two_projects_of_equal_weight_take_turns(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    a, b = await make_project(pool, "a"), await make_project(pool, "b")
    await _queue(pool, blobs, a, 60, "a")
    await _queue(pool, blobs, b, 60, "b")  # later, so a later deadline
    cursor = _cursor()
    counts: Counter[str] = Counter()
    for _ in range(10):
        counts.update(await _by_project(pool, await _claim(pool, cursor)))
        assert abs(counts[a] - counts[b]) <= N
    assert counts[a] == counts[b] == 25


async def test_a_project_of_weight_two_gets_twice_the_share(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    a, b = await make_project(pool, "a"), await make_project(pool, "b")
    async with pool.connection() as conn:
        await conn.execute("UPDATE projects SET weight = 2 WHERE id = %s", (b,))
    await _queue(pool, blobs, a, 100, "a")
    await _queue(pool, blobs, b, 100, "b")
    counts = await _rounds(pool, _cursor(), 12)
    assert counts[a] + counts[b] == 60
    assert abs(counts[b] - 2 * counts[a]) <= 2 * N


async def test_fair_share_off_serves_the_earliest_deadline_first(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    a, b = await make_project(pool, "a"), await make_project(pool, "b")
    await _queue(pool, blobs, a, 20, "a")
    await _queue(pool, blobs, b, 20, "b")
    async with pool.connection() as conn:
        claimed = await queue.claim(conn, pool="spot", owner="w1", n=20, fair_share=False)
    assert set(await _by_project(pool, claimed)) == {a}


async def test_one_project_claims_in_the_plain_order(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _queue(pool, blobs, DEFAULT_PROJECT_ID, 30, "first")
    await _queue(pool, blobs, DEFAULT_PROJECT_ID, 30, "second")
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id FROM requests WHERE pool = 'spot' "
            "ORDER BY priority DESC, deadline_at, prefix_key, id"
        )
        expected = [r["id"] for r in await cur.fetchall()]
    claimed: list[int] = []
    cursor = queue.QueueCursor("spot")
    async with pool.connection() as conn:
        for _ in range(12):
            claimed += [c.id for c in await cursor.claim(conn, owner="w1", n=N)]
    assert claimed == expected


async def test_the_dedicated_pool_keeps_deadline_order(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    a, b = await make_project(pool, "a"), await make_project(pool, "b")
    await _queue(pool, blobs, a, 20, "a")
    await _queue(pool, blobs, b, 20, "b")
    async with pool.connection() as conn:
        await conn.execute("UPDATE requests SET pool = 'dedicated'")
        claimed = await queue.claim(conn, pool="dedicated", owner="w1", n=20)
    assert set(await _by_project(pool, claimed)) == {a}


async def test_priority_comes_before_the_share(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    a, b = await make_project(pool, "a"), await make_project(pool, "b")
    await _queue(pool, blobs, a, 30, "a")
    await _queue(pool, blobs, b, 30, "b")
    cursor = _cursor()
    await _claim(pool, cursor)  # one project's turn: the other is owed the next one
    await _claim(pool, cursor)
    await _claim(pool, cursor)
    urgent = await _queue(pool, blobs, a, 8, "urgent", priority="10")
    claimed = await _claim(pool, cursor, 8)
    assert {c.batch_id for c in claimed} == {urgent}


async def test_a_project_that_returns_banks_no_credit(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    a, b, c = [await make_project(pool, name) for name in "abc"]
    await _queue(pool, blobs, a, 200, "a")
    await _queue(pool, blobs, b, 10, "b1")
    cursor = _cursor()
    first = await _rounds(pool, cursor, 4)
    assert first[b] == 10  # b ran dry
    await _queue(pool, blobs, c, 200, "c")
    await _rounds(pool, cursor, 16)  # a and c take turns, far past what b had
    await _queue(pool, blobs, b, 100, "b2")
    back = await _rounds(pool, cursor, 6)
    assert abs(back[b] - 10) <= N and abs(back[a] - 10) <= N and abs(back[c] - 10) <= N


async def test_a_cursor_takes_turns_from_each_projects_resume_position(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    a, b = await make_project(pool, "a"), await make_project(pool, "b")
    await _queue(pool, blobs, a, 30, "a")
    await _queue(pool, blobs, b, 30, "b")
    cursor = queue.QueueCursor("spot", rescan_seconds=3600)
    claimed: list[ClaimedRequest] = []
    async with pool.connection() as conn:
        for _ in range(14):
            claimed += await cursor.claim(conn, owner="w1", n=N)
    projects = await _by_project(pool, claimed)
    assert len(claimed) == len({c.id for c in claimed}) == 60
    # turns of one claim each while both have work, each project in its own line order
    assert all(len(set(projects[i : i + 2 * N])) == 2 for i in range(0, 50, 2 * N))
    for project, tag in ((a, "a"), (b, "b")):
        mine = [c.custom_id for c, p in zip(claimed, projects, strict=True) if p == project]
        assert mine == [f"{tag}-{i}" for i in range(30)]


async def test_concurrent_fair_claimers_never_get_the_same_request(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    a, b = await make_project(pool, "a"), await make_project(pool, "b")
    await _queue(pool, blobs, a, 100, "a")
    await _queue(pool, blobs, b, 100, "b")

    async def claimer(owner: str) -> list[int]:
        cursor = queue.QueueCursor("spot")
        got: list[int] = []
        while True:
            async with pool.connection() as conn:
                claimed = await cursor.claim(conn, owner=owner, n=N)
            if not claimed:
                return got
            got += [c.id for c in claimed]

    results = await asyncio.gather(*(claimer(f"w{i}") for i in range(4)))
    every = [i for r in results for i in r]
    assert len(every) == len(set(every)) == 200
