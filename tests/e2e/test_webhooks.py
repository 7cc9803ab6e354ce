"""Webhooks end to end: real api, scheduler, worker and engine-sim processes, a real HTTP
server receiving the deliveries, and the official ``openai`` SDK as the only client: every
method of ``client.webhooks`` and ``client.webhooks.event_types`` against the real stack,
batches' deliveries unwrapped with the SDK, under rotated secrets with and without grace."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.webhooks import (
    BatchCancelledWebhookEvent,
    BatchCompletedWebhookEvent,
    BatchFailedWebhookEvent,
    DeletedWebhookEndpoint,
    WebhookEndpoint,
    WebhookEndpointTestResult,
    WebhookEndpointWithSecret,
)

from tests.e2e.test_sdk import new_user_key, wait_batch
from tests.helpers import chat_file
from tests.stack import ADMIN_KEY, Stack
from tests.webhook_receiver import Received, Receiver, receiving

pytestmark = pytest.mark.e2e

ALLOW_PRIVATE = {"INFERBATCH_WEBHOOK_ALLOW_PRIVATE": "true"}
BATCH_EVENTS = ["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]


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


def _http(stack: Stack, key: str = ADMIN_KEY) -> httpx.Client:
    """For what the SDK cannot send: the deliveries listing (an extension), a create
    without a name."""
    return httpx.Client(
        base_url=stack.url + "/v1", headers={"authorization": f"Bearer {key}"}, timeout=10
    )


def _create(client: openai.OpenAI, url: str, **fields: Any) -> WebhookEndpointWithSecret:
    fields.setdefault("event_types", BATCH_EVENTS)
    return client.webhooks.create(name=fields.pop("name", "ci"), url=url, **fields)


def _batch(client: openai.OpenAI, n: int, **extra: Any) -> openai.types.Batch:
    f = client.files.create(file=("in.jsonl", chat_file(n)), purpose="batch")
    return client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **extra,
    )


def _verifies(client: openai.OpenAI, got: Received, secret: str) -> bool:
    try:
        client.webhooks.verify_signature(got.body, got.headers, secret=secret)
    except openai.InvalidWebhookSignatureError:
        return False
    return True


def _wait_delivered(api: httpx.Client, endpoint_id: str, n: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    data: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        data = api.get(f"/webhook_endpoints/{endpoint_id}/deliveries").json()["data"]
        if sum(d["status"] == "delivered" for d in data) >= n:
            return data
        time.sleep(0.2)
    raise TimeoutError(f"deliveries of {endpoint_id}: {data}")


def test_every_sdk_webhooks_method_against_the_real_stack(stack: Stack, receiver: Receiver) -> None:
    client = stack.client()

    # event_types.list: the types this deployment sends
    listed_types = client.webhooks.event_types.list()
    assert (listed_types.object, listed_types.data) == ("list", BATCH_EVENTS)

    # create: the only answer besides rotate_secret that holds the secret
    created = _create(client, receiver.url + "/hooks", name="ci hooks")
    assert isinstance(created, WebhookEndpointWithSecret)
    assert created.id.startswith("whe_") and created.object == "webhook_endpoint"
    assert (created.name, created.url, created.event_types) == (
        "ci hooks",
        receiver.url + "/hooks",
        BATCH_EVENTS,
    )
    first_secret = created.signing_secret
    assert first_secret.startswith("whsec_")
    assert created.signing_secret_hint == "whsec_..." + first_secret.rstrip("=")[-4:]
    assert created.updated_at == created.created_at

    # retrieve: no secret
    got = client.webhooks.retrieve(created.id)
    assert isinstance(got, WebhookEndpoint)
    assert got.model_dump() == created.model_dump(exclude={"signing_secret"})
    raw = client.webhooks.with_raw_response.retrieve(created.id)
    assert "signing_secret" not in raw.http_response.json()

    # update: name, url and the complete set of event types; no secret in the answer
    updated = client.webhooks.update(
        created.id,
        name="renamed",
        url=receiver.url + "/moved",
        event_types=["batch.completed", "batch.failed"],
    )
    assert isinstance(updated, WebhookEndpoint)
    assert (updated.name, updated.url, updated.event_types) == (
        "renamed",
        receiver.url + "/moved",
        ["batch.completed", "batch.failed"],
    )
    assert updated.updated_at is not None and updated.updated_at >= created.created_at
    assert "signing_secret" not in (updated.model_extra or {})
    assert client.webhooks.update(created.id, url=receiver.url + "/hooks").url.endswith("/hooks")

    # list, with paging: newest first, auto-paging follows the cursor
    others = [_create(client, f"{receiver.url}/other/{i}", name=f"other {i}") for i in range(3)]
    page = client.webhooks.list(limit=2)
    assert [e.id for e in page.data] == [others[2].id, others[1].id]
    assert page.has_more and page.has_next_page()
    assert [e.id for e in page.get_next_page().data] == [others[0].id, created.id]
    assert [e.id for e in client.webhooks.list(limit=1)] == [
        *(o.id for o in reversed(others)),
        created.id,
    ]
    assert [e.id for e in client.webhooks.list(after=others[0].id).data] == [created.id]
    assert all(isinstance(e, WebhookEndpoint) for e in page.data)

    # test: a signed sample event sent now; the answer is the receiver's status
    result = client.webhooks.test(created.id, event_type="batch.failed")
    assert isinstance(result, WebhookEndpointTestResult)
    assert (result.object, result.webhook_endpoint_id, result.event_type) == (
        "webhook_endpoint.test",
        created.id,
        "batch.failed",
    )
    assert (result.status_code, result.success) == (200, True)
    [sample] = receiver.requests("/hooks")
    event = client.webhooks.unwrap(sample.body, sample.headers, secret=first_secret)
    assert isinstance(event, BatchFailedWebhookEvent)
    assert event.data.id == "batch_test" and sample.headers["webhook-id"] == event.id
    client.webhooks.verify_signature(sample.body, sample.headers, secret=first_secret)
    receiver.script.append(418)
    assert client.webhooks.test(created.id, event_type="batch.completed").status_code == 418

    # rotate_secret without grace: the old secret stops at once, for real deliveries too
    plain = client.webhooks.rotate_secret(created.id)
    assert isinstance(plain, WebhookEndpointWithSecret)
    second_secret = plain.signing_secret
    assert second_secret not in (first_secret, "")
    assert plain.signing_secret_hint == "whsec_..." + second_secret.rstrip("=")[-4:]
    assert plain.updated_at is not None and plain.updated_at >= created.created_at
    batch = _batch(client, 2)
    assert wait_batch(client, batch.id).status == "completed"
    delivered = [r for r in receiver.wait_for(3, "/hooks") if batch.id in r.body]
    [one] = delivered
    unwrapped = client.webhooks.unwrap(one.body, one.headers, secret=second_secret)
    assert isinstance(unwrapped, BatchCompletedWebhookEvent) and unwrapped.data.id == batch.id
    assert not _verifies(client, one, first_secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(one.body, one.headers, secret=first_secret)

    # rotate_secret with grace: for 24 hours both secrets sign every delivery
    graced = client.webhooks.rotate_secret(created.id, keep_old_secret_active_for_24_hours=True)
    third_secret = graced.signing_secret
    assert third_secret not in (first_secret, second_secret)
    batch = _batch(client, 1)
    assert wait_batch(client, batch.id).status == "completed"
    [two] = [r for r in receiver.wait_for(4, "/hooks") if batch.id in r.body]
    assert len(two.headers["webhook-signature"].split(" ")) == 2
    for secret in (second_secret, third_secret):
        unwrapped = openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(
            two.body, two.headers
        )
        assert isinstance(unwrapped, BatchCompletedWebhookEvent) and unwrapped.data.id == batch.id
    assert not _verifies(client, two, first_secret)
    assert client.webhooks.test(created.id, event_type="batch.expired").status_code == 200
    graced_test = receiver.requests("/hooks")[-1]
    assert _verifies(client, graced_test, second_secret)
    assert _verifies(client, graced_test, third_secret)

    # the deliveries listing (extension) shows both, delivered at the first attempt
    deliveries = _wait_delivered(_http(stack), created.id, 2)
    assert [(d["attempts"], d["last_response_status"]) for d in deliveries] == [(1, 200)] * 2
    assert {d["event_id"] for d in deliveries} == {
        one.headers["webhook-id"],
        two.headers["webhook-id"],
    }

    # delete
    gone = client.webhooks.delete(created.id)
    assert isinstance(gone, DeletedWebhookEndpoint)
    assert (gone.id, gone.object, gone.deleted) == (created.id, "webhook_endpoint.deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.webhooks.retrieve(created.id)
    assert created.id not in [e.id for e in client.webhooks.list()]


def test_a_cancelled_batch_sends_batch_cancelled(stack: Stack, receiver: Receiver) -> None:
    client = stack.client()
    created = _create(client, receiver.url + "/cancelled", event_types=["batch.cancelled"])
    batch = _batch(client, 100)
    deadline = time.monotonic() + 30
    while client.batches.retrieve(batch.id).status != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    client.batches.cancel(batch.id)
    assert wait_batch(client, batch.id).status == "cancelled"
    [got] = receiver.wait_for(1, "/cancelled")
    event = openai.OpenAI(api_key="unused", webhook_secret=created.signing_secret).webhooks.unwrap(
        got.body, got.headers
    )
    assert isinstance(event, BatchCancelledWebhookEvent) and event.data.id == batch.id


def test_endpoints_belong_to_their_user_and_admins_see_all(
    stack: Stack, receiver: Receiver
) -> None:
    alice_key, bob_key = new_user_key(stack, "alice"), new_user_key(stack, "bob")
    alice, bob = stack.client(alice_key), stack.client(bob_key)
    mine = _create(alice, receiver.url + "/alice")
    for call in (
        lambda: bob.webhooks.retrieve(mine.id),
        lambda: bob.webhooks.update(mine.id, name="taken"),
        lambda: bob.webhooks.delete(mine.id),
        lambda: bob.webhooks.rotate_secret(mine.id, keep_old_secret_active_for_24_hours=True),
        lambda: bob.webhooks.test(mine.id, event_type="batch.completed"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert _http(stack, bob_key).get(f"/webhook_endpoints/{mine.id}/deliveries").status_code == 404
    assert receiver.requests() == []
    assert bob.webhooks.list().data == []
    assert alice.webhooks.retrieve(mine.id).name == "ci"  # bob's update changed nothing
    listed = stack.client().webhooks.list()
    assert [e.id for e in listed.data] == [mine.id]

    # event types the SDK knows but this deployment never sends are refused by name
    with pytest.raises(openai.BadRequestError) as refused:
        _create(alice, receiver.url, event_types=["batch.completed", "response.completed"])
    assert refused.value.param == "event_types"
    assert "response.completed" in refused.value.message
    assert ", ".join(BATCH_EVENTS) in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        alice.webhooks.test(mine.id, event_type="eval.run.failed")
    assert refused.value.param == "event_type"
    nameless = _http(stack, alice_key).post(
        "/webhook_endpoints", json={"url": receiver.url, "event_types": ["batch.failed"]}
    )
    assert nameless.status_code == 400 and nameless.json()["error"]["param"] == "name"
    assert [e.id for e in alice.webhooks.list()] == [mine.id]

    gone = alice.webhooks.delete(mine.id)
    assert (gone.id, gone.object, gone.deleted) == (mine.id, "webhook_endpoint.deleted", True)
    with pytest.raises(openai.NotFoundError):
        alice.webhooks.retrieve(mine.id)


def test_by_default_a_webhook_url_on_a_private_address_is_refused(
    db_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    s = Stack(db_url, tmp_path).start(spot=0, dedicated=0, scheduler=False)
    try:
        client = s.client()
        for url in (receiver.url + "/hook", f"http://localhost:{receiver.port}/hook"):
            with pytest.raises(openai.BadRequestError) as refused:
                _create(client, url)
            assert refused.value.param == "url"
            assert "public addresses only" in refused.value.message
        assert client.webhooks.list().data == []
        with pytest.raises(openai.BadRequestError) as refused:
            _batch(client, 1, extra_body={"callback_url": receiver.url + "/callback"})
        assert refused.value.param == "callback_url"
        assert client.batches.list().data == []
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
