"""Fair share end to end: a small batch of another project, created later with the same
priority and window, is not held back behind a busy project's big batch."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file
from tests.stack import ADMIN_KEY, Stack

pytestmark = pytest.mark.e2e

BIG, SMALL = 2000, 20


def _queued(db_url: str, batch_id: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM requests WHERE batch_id = %s AND status = 'queued'",
            (batch_id,),
        ).fetchone()
    return row[0] if row else 0


def _project_key(api_url: str) -> str:
    """A key of a new project (a service account's), made through the Administration API."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    base = "/v1/organization/projects"
    with httpx.Client(base_url=api_url, headers=admin) as http:
        project = http.post(base, json={"name": "small"}).raise_for_status().json()
        account = http.post(f"{base}/{project['id']}/service_accounts", json={"name": "bot"})
        return str(account.raise_for_status().json()["api_key"]["value"])


def test_a_later_small_batch_of_another_project_is_not_held_back(
    db_url: str, tmp_path: Path
) -> None:
    # one spot worker: 16 requests in flight of 0.1 s each, so the big batch alone takes
    # over ten seconds
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
            input_file_id=big_file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 30
        while True:  # the worker is busy with the big batch
            b = client.batches.retrieve(big.id)
            if b.status == "in_progress" and b.request_counts and b.request_counts.completed:
                break
            assert time.monotonic() < deadline, b.status
            time.sleep(0.1)

        other = s.client(_project_key(s.url))
        small_file = other.files.create(
            file=("small.jsonl", chat_file(SMALL, prefix="small", model="small-model")),
            purpose="batch",
        )
        small = other.batches.create(
            input_file_id=small_file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        small_done = wait_batch(other, small.id, timeout=30)
        big_queued = _queued(s.env["INFERBATCH_DATABASE_URL"], big.id)
        assert small_done.status == "completed" and small_done.request_counts
        assert small_done.request_counts.completed == SMALL
        assert big_queued > 0, "the big batch was no longer waiting when the small one ended"

        big_done = wait_batch(client, big.id, timeout=60)
        assert big_done.status == "completed" and big_done.request_counts
        assert big_done.request_counts.completed == BIG
    finally:
        s.close()
