"""Deduplication statements on real PostgreSQL: followers, failed leaders, scopes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import dedup
from inferbatch.db import requests as queue
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.scheduler.ingest import ingest_next
from tests.helpers import chat_line
from tests.integration.fixtures import (
    REQUESTS_JOINED,
    SETTLE_DIRECTLY,
    make_batch,
    make_user,
    utcnow,
)

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


async def _ids(pool: Pool) -> dict[str, tuple[int, int | None]]:
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT custom_id, id, dedup_of FROM {REQUESTS_JOINED}")
        return {r["custom_id"]: (r["id"], r["dedup_of"]) for r in await cur.fetchall()}


async def test_a_new_batch_follows_the_leader_not_a_waiting_request(
    pool: Pool, tmp_path: Path
) -> None:
    """The newest identical request is itself waiting: the new lines wait for its leader,
    so no follower ever waits on a follower."""
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    first = "\n".join(chat_line(f"a{i}", "same") for i in range(2)).encode()
    second = "\n".join(chat_line(f"b{i}", "same") for i in range(2)).encode()
    await make_batch(pool, blobs, user, first)
    await ingest_next(pool, blobs, max_requests=10, now=utcnow)
    await make_batch(pool, blobs, user, second)
    await ingest_next(pool, blobs, max_requests=10, now=utcnow)
    ids = await _ids(pool)
    leader = ids["a0"][0]
    assert ids["a0"][1] is None
    assert {ids[c][1] for c in ("a1", "b0", "b1")} == {leader}


def _work(node: dict[str, object]) -> float:
    """Rows a plan node produced over all its loops plus the rows its filters threw away,
    summed over the tree."""
    loops = float(node.get("Actual Loops", 1))  # type: ignore[arg-type]
    rows = float(node.get("Actual Rows", 0)) * loops  # type: ignore[arg-type]
    for key in ("Rows Removed by Filter", "Rows Removed by Join Filter"):
        rows += float(node.get(key, 0)) * loops  # type: ignore[arg-type]
    children = node.get("Plans", [])
    return rows + sum(_work(child) for child in children)  # type: ignore[union-attr]


async def test_the_lookup_costs_a_few_rows_per_line_whatever_the_statistics_say(
    pool: Pool, tmp_path: Path
) -> None:
    """A settled history, analysed, then a new batch whose rows the statistics have not
    seen (as at every ingest): the lookup must still do a bounded amount of work per line.
    Planned on those statistics, joins over the new rows become nested loops over whole
    partial indexes, quadratic in the batch (millions of rows for these 1,500 lines)."""
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    history = "\n".join(chat_line(f"h{i}", f"old {i}") for i in range(3000)).encode()
    await make_batch(pool, blobs, user, history)
    await ingest_next(pool, blobs, max_requests=5000, now=utcnow)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id FROM requests")
        settle = {"status": "completed", "pool": "spot", "started": utcnow(), "dedup_of": None}
        settle |= {"finished": utcnow(), "response_status": 200, "prompt_tokens": 1}
        settle |= {"completion_tokens": 1, "ids": [r["id"] for r in await cur.fetchall()]}
        await conn.execute(SETTLE_DIRECTLY, settle)
        for table in ("requests", "request_inputs", "request_results", "batches"):
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
            await conn.execute(f"ANALYZE {table}")
    lines = 1500
    new = [chat_line(f"n{i}", f"new {i}") for i in range(lines - 1)]
    new.append(chat_line("again", "old 7"))  # the one line that reuses the history
    batch = await make_batch(pool, blobs, user, "\n".join(new).encode())
    await ingest_next(pool, blobs, max_requests=5000, now=utcnow)
    assert (await _statuses(pool))["again"] == ("completed", True)
    async with pool.connection() as conn:
        cur = await conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + dedup.MATCHES,
            {"batch": batch.id, "owner": user.id, "scope": "user", "horizon": 86400.0},
        )
        [plan] = (await cur.fetchone())["QUERY PLAN"]  # type: ignore[index]
    assert _work(plan["Plan"]) <= 20 * lines


_SENT = 1200
_DISTINCT = 900
"""A file of _SENT lines whose bodies repeat every _DISTINCT lines, sent twice."""


async def _send_again(
    pool: Pool, blobs: LocalBlobStore, settle_first: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ingest the file, settle its requests as 2xx if told, ingest it again; returns both
    batches' requests (id, status, dedup_of) in line order."""
    user = await make_user(pool)
    content = "\n".join(chat_line(f"c{i}", f"same {i % _DISTINCT}") for i in range(_SENT))
    batches = []
    for send in range(2):
        batches.append(await make_batch(pool, blobs, user, content.encode()))
        await ingest_next(pool, blobs, max_requests=_SENT, now=utcnow)
        if send == 0 and settle_first:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT id FROM requests")
                settle = {"status": "completed", "pool": "spot", "started": utcnow()}
                settle |= {"dedup_of": None, "finished": utcnow(), "response_status": 200}
                settle |= {"prompt_tokens": 1, "completion_tokens": 1}
                settle |= {"ids": [r["id"] for r in await cur.fetchall()]}
                await conn.execute(SETTLE_DIRECTLY, settle)
    async with pool.connection() as conn:
        rows = []
        for batch in batches:
            cur = await conn.execute(
                "SELECT q.id, q.status, q.dedup_of FROM requests q "
                "JOIN request_inputs i ON i.id = q.id WHERE q.batch_id = %s ORDER BY i.line",
                (batch.id,),
            )
            rows.append(await cur.fetchall())
    return rows[0], rows[1]


async def test_a_file_sent_again_follows_the_first_batch_line_for_line(
    pool: Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch still queued: every line of the second waits for the leader of its
    input in the first (the first batch's first line with it), across match chunks."""
    monkeypatch.setattr(dedup, "MATCH_CHUNK", 100)
    first, again = await _send_again(pool, LocalBlobStore(tmp_path), settle_first=False)
    leaders = [r["id"] for r in first[:_DISTINCT]]
    assert [r["status"] for r in first] == ["queued"] * _DISTINCT + ["waiting"] * (
        _SENT - _DISTINCT
    )
    assert [(r["status"], r["dedup_of"]) for r in again] == [
        ("waiting", leaders[i % _DISTINCT]) for i in range(_SENT)
    ]


async def test_a_file_sent_again_reuses_the_first_batch_line_for_line(
    pool: Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch completed: every line of the second reuses the newest output of its
    input (the first batch's last line with it), across match chunks."""
    monkeypatch.setattr(dedup, "MATCH_CHUNK", 100)
    first, again = await _send_again(pool, LocalBlobStore(tmp_path), settle_first=True)
    newest = {i % _DISTINCT: r["id"] for i, r in enumerate(first)}
    assert [(r["status"], r["dedup_of"]) for r in again] == [
        ("completed", newest[i % _DISTINCT]) for i in range(_SENT)
    ]


async def test_matches_come_in_id_order_and_their_updates_read_by_key(
    pool: Pool, tmp_path: Path
) -> None:
    """A batch's matches come in id order, so that a chunk of them is a run of neighbouring
    rows; applying a chunk reads those rows by key, not the whole queue (once per chunk,
    that would be quadratic in the batch)."""
    _, again = await _send_again(pool, LocalBlobStore(tmp_path), settle_first=False)
    chunk = again[:100]
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT batch_id, owner_id FROM requests JOIN batches b "
            "ON b.id = batch_id WHERE requests.id = %s",
            (chunk[0]["id"],),
        )
        batch = await cur.fetchone()
        assert batch is not None
        cur = await conn.execute(
            dedup.MATCHES,
            {
                "batch": batch["batch_id"],
                "owner": batch["owner_id"],
                "scope": "user",
                "horizon": 86400.0,
            },
        )
        ids = [r["id"] for r in await cur.fetchall()]
        assert ids == sorted(ids) == [r["id"] for r in again]
        for table in ("requests", "request_inputs", "request_results", "batches"):
            await conn.execute(f"ANALYZE {table}")
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + dedup.FOLLOW,
                {"ids": [r["id"] for r in chunk], "sources": [r["dedup_of"] for r in chunk]},
            )
            [plan] = (await cur.fetchone())["QUERY PLAN"]  # type: ignore[index]
    assert _work(plan["Plan"]) <= 10 * len(chunk)
