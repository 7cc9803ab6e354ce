"""Priority end to end: on a busy queue a high-priority batch created later overtakes a
large normal-priority batch, because workers claim by ``priority DESC`` first."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file
from tests.stack import Stack

pytestmark = pytest.mark.e2e

BIG, SMALL = 2000, 20


def _queued(db_url: str, batch_id: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM requests WHERE batch_id = %s AND status = 'queued'",
            (batch_id,),
        ).fetchone()
    return row[0] if row else 0


def test_a_later_high_priority_batch_overtakes_a_busy_queue(db_url: str, tmp_path: Path) -> None:
    # one spot worker, no dedicated worker: 16 requests in flight of 0.1 s each, so the
    # big batch takes over ten seconds and keeps the queue busy
    s = Stack(
        db_url,
        tmp_path,
        sim_args=("--base-latency-s", "0.1", "--max-concurrency", "16"),
        env={"INFERBATCH_ENGINE_MAX_IN_FLIGHT": "16"},
    )
    s.start(spot=1, dedicated=0)
    try:
        client = s.client()
        big_file = client.files.create(file=("big.jsonl", chat_file(BIG)), purpose="batch")
        big = client.batches.create(
            input_file_id=big_file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"priority": "1"},
        )
        deadline = time.monotonic() + 30
        while True:  # the worker is busy with the big batch
            b = client.batches.retrieve(big.id)
            if b.status == "in_progress" and b.request_counts and b.request_counts.completed:
                break
            assert time.monotonic() < deadline, b.status
            time.sleep(0.1)

        # another model, so no request of the small batch is a duplicate of a big one's
        small_file = client.files.create(
            file=("small.jsonl", chat_file(SMALL, prefix="vip", model="vip-model")),
            purpose="batch",
        )
        small = client.batches.create(
            input_file_id=small_file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"priority": "10"},
        )
        assert small.created_at >= big.created_at
        small_done = wait_batch(client, small.id, timeout=30)
        big_queued = _queued(s.env["INFERBATCH_DATABASE_URL"], big.id)
        assert small_done.status == "completed" and small_done.request_counts
        assert small_done.request_counts.completed == SMALL
        assert big_queued > 0, "the big batch was no longer waiting when the small one ended"

        big_done = wait_batch(client, big.id, timeout=60)
        assert big_done.status == "completed" and big_done.request_counts
        assert big_done.request_counts.completed == BIG
        assert small_done.completed_at and big_done.completed_at
        assert small_done.completed_at < big_done.completed_at
    finally:
        s.close()
