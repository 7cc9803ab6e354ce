"""Anthropic's Message Batches API end to end: real api, scheduler, worker and engine-sim
processes, driven with the official ``anthropic`` SDK changed only in ``base_url``.

engine-sim serves no ``/v1/messages``: the worker finds out and translates each request
to a chat completion and its answer back to a Message."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.messages import MessageBatch

from tests.e2e.test_sdk import new_user_key
from tests.stack import ADMIN_KEY, Stack

pytestmark = pytest.mark.e2e


def client_for(stack: Stack, key: str = ADMIN_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=0)


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 60) -> MessageBatch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"Message Batch {batch_id} still {batch.processing_status}")


def _status(stack: Stack, batch_id: str) -> str:
    """The batch's own status, as the OpenAI API shows it."""
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    return str(httpx.get(f"{stack.url}/v1/batches/{batch_id}", headers=headers).json()["status"])


def params(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "sim",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def test_a_message_batch_round_trip_with_the_sdk(stack: Stack) -> None:
    client = client_for(stack)
    requests: list[Any] = [
        {"custom_id": f"q-{i}", "params": params(f"Question {i}", system="Be brief.")}
        for i in range(5)
    ]
    # a server tool cannot be sent as a chat completion: that request errors
    web = [{"type": "web_search_20250305", "name": "web_search"}]
    requests.append({"custom_id": "web", "params": params("Search.", tools=web)})
    batch = client.messages.batches.create(requests=requests)
    assert batch.id.startswith("msgbatch_") and batch.type == "message_batch"
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.request_counts.processing == 6 and batch.request_counts.succeeded == 0
    assert batch.ended_at is None and batch.cancel_initiated_at is None
    assert (batch.expires_at - batch.created_at).total_seconds() == 24 * 3600
    assert batch.created_at.tzinfo is not None

    done = wait_ended(client, batch.id)
    counts = done.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 5, 1)
    assert (counts.canceled, counts.expired) == (0, 0)
    assert done.ended_at is not None and done.ended_at >= done.created_at
    assert done.results_url == f"{stack.url}/v1/messages/batches/{batch.id}/results"

    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert sorted(results) == sorted(r["custom_id"] for r in requests)
    for i in range(5):
        result = results[f"q-{i}"]
        assert result.type == "succeeded"
        message = result.message
        assert message.id.startswith("msg_") and message.role == "assistant"
        assert message.content[0].type == "text" and "[simulated]" in message.content[0].text
        assert message.stop_reason in ("end_turn", "max_tokens")
        assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    refused = results["web"]
    assert refused.type == "errored"
    assert refused.error.error.type == "invalid_request_error"
    assert refused.error.error.message.startswith("tools[0]: ")

    assert client.messages.batches.retrieve(batch.id) == done
    deleted = client.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)
    assert [b.id for b in client.messages.batches.list()] == []
    # its files went with it
    openai_files = httpx.get(
        stack.url + "/v1/files", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    ).json()
    assert openai_files["data"] == []


def test_message_batches_list_pages_with_after_and_before(stack: Stack) -> None:
    client = client_for(stack)
    created = [
        client.messages.batches.create(requests=[{"custom_id": "a", "params": params(str(i))}]).id
        for i in range(5)
    ]
    newest = created[::-1]
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest[:2] and page.has_more
    assert (page.first_id, page.last_id) == (newest[0], newest[1])
    older = client.messages.batches.list(limit=2, after_id=page.last_id)
    assert [b.id for b in older.data] == newest[2:4] and older.has_more
    newer = client.messages.batches.list(limit=2, before_id=newest[4])
    assert [b.id for b in newer.data] == newest[2:4] and newer.has_more
    first = client.messages.batches.list(limit=2, before_id=newest[2])
    assert [b.id for b in first.data] == newest[:2] and not first.has_more
    # the SDK pages on by itself, in either direction
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest
    assert [b.id for b in client.messages.batches.list(limit=1, before_id=newest[3])] == [
        newest[2],
        newest[1],
        newest[0],
    ]
    for bad in (0, 1001):
        with pytest.raises(anthropic.BadRequestError) as exc:
            client.messages.batches.list(limit=bad)
        assert exc.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    # other users see none of them
    bob = client_for(stack, new_user_key(stack, "bob"))
    assert list(bob.messages.batches.list()) == []
    with pytest.raises(anthropic.NotFoundError):
        bob.messages.batches.retrieve(created[0])


def test_bad_requests_get_typed_errors_and_create_nothing(stack: Stack) -> None:
    client = client_for(stack)
    cases: list[tuple[list[Any], str]] = [
        (
            [
                {"custom_id": "same", "params": params("a")},
                {"custom_id": "same", "params": params("b")},
            ],
            "requests[1].custom_id",
        ),
        (
            [{"custom_id": "x", "params": {"model": "sim", "messages": params("a")["messages"]}}],
            "requests[0].params.max_tokens",
        ),
        ([{"custom_id": "x", "params": params("a", stream=True)}], "requests[0].params.stream"),
        ([{"custom_id": "not ok!", "params": params("a")}], "requests[0].custom_id"),
        ([], "requests"),
    ]
    for requests, path in cases:
        with pytest.raises(anthropic.BadRequestError) as exc:
            client.messages.batches.create(requests=requests)
        body = exc.value.body
        assert isinstance(body, dict) and body["type"] == "error", body
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith(f"{path}: "), body
    r = httpx.post(
        stack.url + "/v1/messages/batches", content=b"{x", headers={"x-api-key": ADMIN_KEY}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in r.json()["error"]["message"]
    assert list(client.messages.batches.list()) == []  # nothing was created
    files = httpx.get(stack.url + "/v1/files", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert files.json()["data"] == []
    assert not [p for p in (stack.workdir / "blobs").rglob("*") if p.is_file()]

    for call in (
        lambda: client.messages.batches.retrieve("msgbatch_nope"),
        lambda: client.messages.batches.cancel("msgbatch_nope"),
        lambda: client.messages.batches.delete("msgbatch_nope"),
    ):
        with pytest.raises(anthropic.NotFoundError) as missing:
            call()
        assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]

    with pytest.raises(anthropic.AuthenticationError) as denied:
        client_for(stack, "wrong-key").messages.batches.list()
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]

    # Anthropic's own header, and no anthropic-version: accepted
    r = httpx.get(stack.url + "/v1/messages/batches", headers={"x-api-key": ADMIN_KEY})
    assert r.status_code == 200 and r.json() == {
        "data": [],
        "has_more": False,
        "first_id": None,
        "last_id": None,
    }
    r = httpx.get(stack.url + "/v1/messages/batches")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_cancel_results_before_the_end_and_delete_while_processing(
    db_url: str, tmp_path: Path
) -> None:
    # a slow engine keeps the batch in progress long enough to cancel it
    s = Stack(
        db_url,
        tmp_path,
        sim_args=("--base-latency-s", "0.5", "--max-concurrency", "2"),
        env={"INFERBATCH_MAX_MESSAGE_BATCH_BYTES": "200000"},
    )
    s.start(dedicated=0)
    try:
        client = client_for(s)
        requests = [{"custom_id": f"r{i}", "params": params(f"Slow {i}")} for i in range(60)]
        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            client.messages.batches.results(batch.id)  # the SDK asks nothing: no results_url
        with pytest.raises(anthropic.BadRequestError) as early:
            client.get(f"/v1/messages/batches/{batch.id}/results", cast_to=object)
        assert "not ended" in early.value.body["error"]["message"]  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError) as busy:
            client.messages.batches.delete(batch.id)
        assert "cancel it" in busy.value.body["error"]["message"]  # type: ignore[index]

        deadline = time.monotonic() + 30  # until its requests are queued (or running)
        while _status(s, batch.id) != "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        canceling = client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling"
        assert canceling.cancel_initiated_at is not None
        done = wait_ended(client, batch.id)
        counts = done.request_counts
        assert counts.canceled > 0 and counts.succeeded > 0
        assert (counts.processing, counts.errored, counts.expired) == (0, 0, 0)
        assert counts.succeeded + counts.canceled == 60
        results = list(client.messages.batches.results(batch.id))
        kinds = [r.result.type for r in results]
        assert len(results) == 60 and sorted({r.custom_id for r in results}) == sorted(
            f"r{i}" for i in range(60)
        )
        assert kinds.count("canceled") == counts.canceled
        assert kinds.count("succeeded") == counts.succeeded
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.cancel(batch.id)  # ended
        assert client.messages.batches.delete(batch.id).id == batch.id

        big = [{"custom_id": f"b{i}", "params": params("x" * 5000)} for i in range(50)]
        with pytest.raises(anthropic.APIStatusError) as large:
            client.messages.batches.create(requests=big)  # type: ignore[arg-type]
        assert large.value.status_code == 413
        assert large.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
        assert list(client.messages.batches.list()) == []
    finally:
        s.close()
