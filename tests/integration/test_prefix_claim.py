"""Prefix-aware claims: requests that share a prompt head are claimed together, never
before an earlier deadline or a higher priority."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import requests as queue
from inferbatch.db.types import Pool
from inferbatch.scheduler.ingest import ingest_next
from tests.integration.fixtures import make_batch, make_user, utcnow

pytestmark = pytest.mark.integration

OFF = {"dedup": "off"}


def _file(tag: str, prompts: int, questions: int, seed: int = 3) -> bytes:
    """``prompts`` long system prompts with ``questions`` each, lines shuffled."""
    lines = []
    for p in range(prompts):
        system = f"{tag} system prompt {p}: " + "be precise and brief. " * 60
        for q in range(questions):
            body = {
                "model": "m",
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"question {q}"},
                ],
            }
            lines.append(
                json.dumps(
                    {"custom_id": f"{tag}-p{p}-q{q}", "method": "POST",
                     "url": "/v1/chat/completions", "body": body}
                )
            )  # fmt: skip
    random.Random(seed).shuffle(lines)
    return ("\n".join(lines) + "\n").encode()


async def _queue(pool: Pool, blobs: LocalBlobStore, content: bytes, **kw: object) -> str:
    user = await make_user(pool)
    batch = await make_batch(pool, blobs, user, content, **kw)  # type: ignore[arg-type]
    assert await ingest_next(pool, blobs, max_requests=10_000, now=utcnow) == batch.id
    return batch.id


def _prompt(custom_id: str) -> str:
    return custom_id.rsplit("-q", 1)[0]


async def test_a_shuffled_batch_is_claimed_one_prompt_head_at_a_time(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _queue(pool, blobs, _file("a", prompts=4, questions=5), metadata=OFF)
    async with pool.connection() as conn:
        claimed = await queue.claim(conn, pool="spot", owner="w", n=20)
    heads = [_prompt(c.custom_id) for c in claimed]
    runs = [h for i, h in enumerate(heads) if i == 0 or heads[i - 1] != h]
    assert sorted(runs) == ["a-p0", "a-p1", "a-p2", "a-p3"]  # each head in one run
    keys = [c.prefix_key for c in claimed]
    assert all(keys) and len(set(keys)) == 4
    # within a head, line order
    for head in runs:
        lines = [c.id for c in claimed if _prompt(c.custom_id) == head]
        assert lines == sorted(lines)


async def test_prefix_grouping_never_goes_before_an_earlier_deadline_or_higher_priority(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    now = utcnow()
    later = await _queue(
        pool, blobs, _file("later", 2, 3), created_at=now - timedelta(hours=2), metadata=OFF
    )
    sooner = await _queue(
        pool, blobs, _file("sooner", 2, 3), created_at=now, window="1h", metadata=OFF
    )
    high = await _queue(
        pool, blobs, _file("high", 1, 2), created_at=now, metadata={**OFF, "priority": "10"}
    )
    async with pool.connection() as conn:
        claimed = await queue.claim(conn, pool="spot", owner="w", n=14)
    assert [c.batch_id for c in claimed] == [high] * 2 + [sooner] * 6 + [later] * 6


async def test_a_cursor_resumes_within_the_prefix_order(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _queue(pool, blobs, _file("c", prompts=3, questions=4), metadata=OFF)
    async with pool.connection() as conn:
        whole = [c.custom_id for c in await queue.claim(conn, pool="spot", owner="x", n=12)]
        await conn.execute("UPDATE requests SET status = 'queued', lease_owner = NULL")
    cursor = queue.QueueCursor("spot", rescan_seconds=3600, clock=lambda: 0.0)
    parts: list[str] = []
    async with pool.connection() as conn:
        for _ in range(4):
            parts += [c.custom_id for c in await cursor.claim(conn, owner="w", n=3)]
    assert parts == whole
