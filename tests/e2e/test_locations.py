"""Data residency end to end: real worker processes in three places (an EU zone, a US zone,
none declared); every request of a batch restricted to some locations is run by a worker
in one of them, and unrestricted work still runs."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg
import pytest

from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_line
from tests.stack import ADMIN_KEY, Stack

pytestmark = pytest.mark.e2e

N = 40
WORKERS = {"eu": "eu-west-1a", "us": "us-east-1a", "none": None}


def _upload(stack: Stack, tag: str) -> str:
    # distinct texts per batch: no request is completed from another batch's output
    lines = [chat_line(f"{tag}-{i}", f"{tag} question {i}") for i in range(N)]
    client = stack.client()
    upload = client.files.create(
        file=("in.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch"
    )
    return upload.id


def _locations_run(db_url: str, batch_id: str) -> list[str | None]:
    """The location of the worker that ran each request of a batch."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            """
            SELECT w.location FROM request_results rr JOIN workers w ON w.id = rr.worker_id
            WHERE rr.batch_id = %s
            """,
            (batch_id,),
        ).fetchall()
        settled = conn.execute(
            "SELECT count(*) FROM request_results WHERE batch_id = %s", (batch_id,)
        ).fetchone()
    assert settled is not None and settled[0] == len(rows) == N
    return [r[0] for r in rows]


def test_restricted_batches_run_only_on_workers_in_their_locations(
    db_url: str, tmp_path: Path
) -> None:
    stack = Stack(db_url, tmp_path, sim_args=("--base-latency-s", "0.02"))
    stack.start(spot=0, dedicated=0)
    try:
        for name, location in WORKERS.items():
            where = ["--location", location] if location else []
            stack.spawn(f"worker-spot-{name}", ["worker", "--pool", "spot", *where])
        client = stack.client()
        eu = client.batches.create(
            input_file_id=_upload(stack, "eu"),
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"allowed_locations": ["eu-*"]},
        )
        us = client.batches.create(
            input_file_id=_upload(stack, "us"),
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"allowed_locations": "us-east-1a,us-west-2b"},
        )
        anywhere = client.batches.create(
            input_file_id=_upload(stack, "any"),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        assert eu.metadata == {"allowed_locations": "eu-*"}
        for batch in (eu, us, anywhere):
            done = wait_batch(client, batch.id, timeout=120)
            assert done.status == "completed" and done.request_counts is not None
            assert done.request_counts.completed == N
        assert set(_locations_run(db_url, eu.id)) == {"eu-west-1a"}
        assert set(_locations_run(db_url, us.id)) == {"us-east-1a"}
        assert set(_locations_run(db_url, anywhere.id)) <= {"eu-west-1a", "us-east-1a", None}
        listed = httpx.get(
            stack.url + "/v1/workers", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ).json()["data"]
        assert sorted(w["location"] or "" for w in listed) == ["", "eu-west-1a", "us-east-1a"]
    finally:
        stack.close()
