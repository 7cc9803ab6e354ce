"""API extensions beyond OpenAI: per-request listing, retry of failed requests, clone."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file, parse_jsonl
from tests.stack import ADMIN_KEY, Stack

pytestmark = pytest.mark.e2e

AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


def test_failed_requests_can_be_listed_retried_and_the_batch_cloned(
    db_url: str, tmp_path: Path
) -> None:
    # every engine call fails: requests end failed after one attempt
    s = Stack(
        db_url, tmp_path, sim_args=("--error-rate", "1.0"), env={"INFERBATCH_MAX_ATTEMPTS": "1"}
    ).start()
    try:
        client = s.client()
        f = client.files.create(file=("in.jsonl", chat_file(6)), purpose="batch")
        b = client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"priority": "5"},
        )
        done = wait_batch(client, b.id)
        assert done.status == "completed" and done.request_counts
        assert done.request_counts.failed == 6

        r = httpx.get(
            f"{s.url}/v1/batches/{b.id}/requests",
            params={"status": "failed", "limit": 4},
            headers=AUTH,
        )
        listing = r.json()
        assert r.status_code == 200 and listing["has_more"] is True
        assert [x["custom_id"] for x in listing["data"]] == [f"req-{i}" for i in range(4)]
        assert {x["status"] for x in listing["data"]} == {"failed"}
        rest = httpx.get(
            f"{s.url}/v1/batches/{b.id}/requests",
            params={"after": listing["last_id"]},
            headers=AUTH,
        ).json()
        assert [x["custom_id"] for x in rest["data"]] == ["req-4", "req-5"]
        one = httpx.get(f"{s.url}/v1/requests/{listing['first_id']}", headers=AUTH).json()
        assert one["body"]["messages"][0]["content"] == "hello 0"
        assert one["response"]["status_code"] == 500
        by_id = httpx.get(
            f"{s.url}/v1/batches/{b.id}/requests", params={"custom_id": "req-3"}, headers=AUTH
        ).json()
        assert [x["custom_id"] for x in by_id["data"]] == ["req-3"]

        # the engine recovers; retry one request, then the rest of the batch
        httpx.post(f"{s.sim_url}/sim/reset")
        s.stop("engine-sim")
        port = s.sim_url.rsplit(":", 1)[1] if s.sim_url else ""
        s.spawn("engine-sim", ["engine-sim", "--port", port])
        from tests.stack import wait_http

        wait_http(f"{s.sim_url}/health")
        r = httpx.post(f"{s.url}/v1/requests/{listing['first_id']}/retry", headers=AUTH)
        assert r.status_code == 200 and r.json()["status"] == "queued"
        again = httpx.post(f"{s.url}/v1/requests/{listing['first_id']}/retry", headers=AUTH)
        assert again.status_code == 409
        r = httpx.post(f"{s.url}/v1/batches/{b.id}/retry", headers=AUTH)
        assert r.status_code == 200 and r.json()["status"] == "in_progress"
        done = wait_batch(client, b.id)
        assert done.status == "completed" and done.request_counts
        assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
        out = parse_jsonl(client.files.content(done.output_file_id or "").text)
        assert sorted(x["custom_id"] for x in out) == [f"req-{i}" for i in range(6)]
        assert httpx.post(f"{s.url}/v1/batches/{b.id}/retry", headers=AUTH).status_code == 409

        r = httpx.post(f"{s.url}/v1/batches/{b.id}/clone", headers=AUTH)
        clone = r.json()
        assert r.status_code == 200 and clone["id"] != b.id
        assert clone["input_file_id"] == f.id and clone["metadata"] == {"priority": "5"}
        assert wait_batch(client, clone["id"]).status == "completed"
        client.files.delete(f.id)
        assert httpx.post(f"{s.url}/v1/batches/{b.id}/clone", headers=AUTH).status_code == 409
    finally:
        s.close()
