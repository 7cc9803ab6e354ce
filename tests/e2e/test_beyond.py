"""What inferbatch adds to OpenAI's batch API, end to end with the official SDK: reading a
batch's output while it runs, and idempotent creates."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.test_sdk import new_user_key, wait_batch
from tests.helpers import chat_file, parse_jsonl
from tests.stack import Stack

pytestmark = pytest.mark.e2e


def test_the_output_of_a_running_batch_is_read_as_it_settles(db_url: str, tmp_path: Path) -> None:
    # a slow engine, so the batch is read over many calls while it runs
    s = Stack(db_url, tmp_path, sim_args=("--base-latency-s", "0.2", "--max-concurrency", "4"))
    s.start(dedicated=0)
    try:
        client = s.client()
        f = client.files.create(file=("in.jsonl", chat_file(60)), purpose="batch")
        b = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        headers = {"authorization": f"Bearer {client.api_key}"}
        seen: list[dict] = []
        statuses: set[str] = set()
        after: str | None = None
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline
            params = {"limit": "7"} | ({"after": after} if after else {})
            r = httpx.get(f"{s.url}/v1/batches/{b.id}/output", params=params, headers=headers)
            assert r.status_code == 200, r.text
            seen += parse_jsonl(r.text)
            statuses.add(r.headers["x-inferbatch-batch-status"])
            after = r.headers.get("x-inferbatch-next-after", after)
            if r.headers["x-inferbatch-complete"] == "true":
                break
            if not r.text:
                time.sleep(0.1)
        assert "in_progress" in statuses  # lines came before the batch ended
        assert sorted(x["custom_id"] for x in seen) == sorted(f"req-{i}" for i in range(60))
        done = wait_batch(client, b.id)
        assert done.output_file_id is not None
        assert sorted(parse_jsonl(client.files.content(done.output_file_id).text), key=str) == (
            sorted(seen, key=str)
        )  # the same lines as the output file
        r = httpx.get(
            f"{s.url}/v1/batches/{b.id}/output", params={"after": "nonsense"}, headers=headers
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "after"
    finally:
        s.close()


def test_a_retried_create_under_an_idempotency_key_returns_the_first_result(
    stack: Stack,
) -> None:
    client = stack.client()

    def key(k: str) -> dict[str, str]:
        return {"Idempotency-Key": k}

    first = client.files.create(
        file=("in.jsonl", chat_file(3)), purpose="batch", extra_headers=key("file-1")
    )
    again = client.files.create(
        file=("in.jsonl", chat_file(3)), purpose="batch", extra_headers=key("file-1")
    )
    assert again.id == first.id
    assert [f.id for f in client.files.list()] == [first.id]  # one file kept
    with pytest.raises(openai.ConflictError) as reused:
        client.files.create(
            file=("in.jsonl", chat_file(4)), purpose="batch", extra_headers=key("file-1")
        )
    assert reused.value.code == "idempotency_key_reused"
    assert [f.id for f in client.files.list()] == [first.id]  # and the refused one is gone

    uploads = [
        client.uploads.create(
            bytes=10,
            filename="big.jsonl",
            mime_type="application/jsonl",
            purpose="batch",
            extra_headers=key("upload-1"),
        )
        for _ in range(2)
    ]
    assert uploads[0].id == uploads[1].id
    with pytest.raises(openai.ConflictError):
        client.uploads.create(
            bytes=11,
            filename="big.jsonl",
            mime_type="application/jsonl",
            purpose="batch",
            extra_headers=key("upload-1"),
        )

    made = [
        client.batches.create(
            input_file_id=first.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"run": "1"},
            extra_headers=key("batch-1"),
        )
        for _ in range(3)
    ]
    assert {b.id for b in made} == {made[0].id}
    assert [b.id for b in client.batches.list()] == [made[0].id]
    with pytest.raises(openai.ConflictError):
        client.batches.create(
            input_file_id=first.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"run": "2"},
            extra_headers=key("batch-1"),
        )
    # a key is the caller's own: another user's identical key makes their own batch
    other = stack.client(new_user_key(stack, "bob"))
    theirs = other.files.create(
        file=("in.jsonl", chat_file(3)), purpose="batch", extra_headers=key("file-1")
    )
    assert theirs.id != first.id
    # a request that failed stored nothing: the same key works once it is fixed
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope",
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers=key("batch-2"),
        )
    fixed = client.batches.create(
        input_file_id=first.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers=key("batch-2"),
    )
    assert fixed.id != made[0].id
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=first.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers=key("x" * 300),
        )
