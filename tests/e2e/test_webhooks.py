"""Webhooks end to end: real api, scheduler, worker and engine-sim processes; endpoints
registered over REST, batches run with the official ``openai`` SDK, and a real HTTP server
receiving the deliveries, which the SDK's ``webhooks.unwrap()`` verifies and parses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.webhooks import BatchCancelledWebhookEvent, BatchCompletedWebhookEvent

from tests.e2e.test_sdk import new_user_key, wait_batch
from tests.helpers import chat_file
from tests.stack import ADMIN_KEY, Stack
from tests.webhook_receiver import Receiver, receiving

pytestmark = pytest.mark.e2e

ALLOW_PRIVATE = {"INFERBATCH_WEBHOOK_ALLOW_PRIVATE": "true"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


@pytest.fixture
def stack(db_url: str, tmp_path: Path) -> Iterator[Stack]:
    # a slow engine keeps a batch in progress long enough to cancel it
    s = Stack(
        db_url,
        tmp_path,
        sim_args=("--base-latency-s", "0.2", "--max-concurrency", "2"),
        env=ALLOW_PRIVATE,
    ).start(dedicated=0)
    try:
        yield s
    finally:
        s.close()


def _api(stack: Stack, key: str = ADMIN_KEY) -> httpx.Client:
    return httpx.Client(
        base_url=stack.url + "/v1", headers={"authorization": f"Bearer {key}"}, timeout=10
    )


def _register(api: httpx.Client, url: str, **fields: Any) -> dict[str, Any]:
    r = api.post("/webhooks", json={"url": url, **fields})
    assert r.status_code == 200, r.text
    created: dict[str, Any] = r.json()
    return created


def _batch(client: openai.OpenAI, n: int, **extra: Any) -> openai.types.Batch:
    f = client.files.create(file=("in.jsonl", chat_file(n)), purpose="batch")
    return client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **extra,
    )


def _wait_delivered(api: httpx.Client, webhook_id: str, n: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data: list[dict[str, Any]] = api.get(f"/webhooks/{webhook_id}/deliveries").json()["data"]
        if sum(d["status"] == "delivered" for d in data) >= n:
            return data
        time.sleep(0.2)
    raise TimeoutError(f"deliveries of {webhook_id}: {data}")


def test_a_completed_batch_is_delivered_and_unwraps_with_the_sdk(
    stack: Stack, receiver: Receiver
) -> None:
    api = _api(stack)
    created = _register(api, receiver.url + "/hooks/batches", description="ci")
    assert created["id"].startswith("wh_") and created["object"] == "webhook"
    assert created["secret"].startswith("whsec_")
    assert created["events"] == [
        "batch.completed",
        "batch.failed",
        "batch.expired",
        "batch.cancelled",
    ]
    client = stack.client()
    batch = _batch(client, 3)
    assert wait_batch(client, batch.id).status == "completed"

    [got] = receiver.wait_for(1, "/hooks/batches")
    event = openai.OpenAI(api_key="unused", webhook_secret=created["secret"]).webhooks.unwrap(
        got.body, got.headers
    )
    assert isinstance(event, BatchCompletedWebhookEvent)
    assert event.data.id == batch.id and event.type == "batch.completed"
    assert event.id.startswith("evt_") and got.headers["webhook-id"] == event.id

    [delivery] = _wait_delivered(api, created["id"])
    assert delivery["event_id"] == event.id and delivery["batch_id"] == batch.id
    assert (delivery["attempts"], delivery["last_response_status"]) == (1, 200)
    assert delivery["next_attempt_at"] is None and delivery["finished_at"]

    # the secret is shown once: never by retrieve, list or update
    assert "secret" not in api.get(f"/webhooks/{created['id']}").json()
    assert all("secret" not in w for w in api.get("/webhooks").json()["data"])
    r = api.post(f"/webhooks/{created['id']}", json={"events": ["batch.failed"]})
    assert r.status_code == 200 and r.json()["events"] == ["batch.failed"]
    assert "secret" not in r.json()


def test_a_cancelled_batch_sends_batch_cancelled(stack: Stack, receiver: Receiver) -> None:
    api = _api(stack)
    created = _register(api, receiver.url + "/cancelled", events=["batch.cancelled"])
    client = stack.client()
    batch = _batch(client, 100)
    deadline = time.monotonic() + 30
    while client.batches.retrieve(batch.id).status != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    client.batches.cancel(batch.id)
    assert wait_batch(client, batch.id).status == "cancelled"
    [got] = receiver.wait_for(1, "/cancelled")
    event = openai.OpenAI(api_key="unused", webhook_secret=created["secret"]).webhooks.unwrap(
        got.body, got.headers
    )
    assert isinstance(event, BatchCancelledWebhookEvent) and event.data.id == batch.id


def test_endpoints_belong_to_their_user_and_admins_see_all(
    stack: Stack, receiver: Receiver
) -> None:
    alice = _api(stack, new_user_key(stack, "alice"))
    bob = _api(stack, new_user_key(stack, "bob"))
    mine = _register(alice, receiver.url + "/alice")
    assert bob.get(f"/webhooks/{mine['id']}").status_code == 404
    assert bob.post(f"/webhooks/{mine['id']}", json={"enabled": False}).status_code == 404
    assert bob.delete(f"/webhooks/{mine['id']}").status_code == 404
    assert bob.get(f"/webhooks/{mine['id']}/deliveries").status_code == 404
    assert bob.get("/webhooks").json()["data"] == []
    listed = _api(stack).get("/webhooks").json()
    assert [w["id"] for w in listed["data"]] == [mine["id"]]
    assert listed["object"] == "list" and listed["first_id"] == mine["id"]
    r = alice.post("/webhooks", json={"url": receiver.url, "events": ["batch.started"]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    gone = alice.delete(f"/webhooks/{mine['id']}").json()
    assert gone == {"id": mine["id"], "object": "webhook", "deleted": True}
    assert alice.get(f"/webhooks/{mine['id']}").status_code == 404


def test_by_default_a_webhook_url_on_a_private_address_is_refused(
    db_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    s = Stack(db_url, tmp_path).start(spot=0, dedicated=0, scheduler=False)
    try:
        api = _api(s)
        for url in (receiver.url + "/hook", f"http://localhost:{receiver.port}/hook"):
            r = api.post("/webhooks", json={"url": url})
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["param"] == "url" and "public addresses only" in error["message"]
        assert api.get("/webhooks").json()["data"] == []
        with pytest.raises(openai.BadRequestError) as refused:
            _batch(s.client(), 1, extra_body={"callback_url": receiver.url + "/callback"})
        assert refused.value.param == "callback_url"
        assert s.client().batches.list().data == []
    finally:
        s.close()


def test_a_batch_callback_url_receives_its_terminal_event(stack: Stack, receiver: Receiver) -> None:
    client = stack.client()
    batch = _batch(client, 2, extra_body={"callback_url": receiver.url + "/callback"})
    secret = (batch.model_extra or {}).get("callback_secret")
    assert isinstance(secret, str) and secret.startswith("whsec_")
    retrieved = client.batches.retrieve(batch.id)
    assert "callback_secret" not in (retrieved.model_extra or {})
    assert wait_batch(client, batch.id).status == "completed"
    [got] = receiver.wait_for(1, "/callback")
    event = openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(
        got.body, got.headers
    )
    assert isinstance(event, BatchCompletedWebhookEvent) and event.data.id == batch.id
