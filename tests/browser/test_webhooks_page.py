"""The portal's Webhooks page in a browser: reached from the menu, it lists the user's
endpoints (name, URL, event types, the secret's hint and how long a rotated-out secret still
signs) and their deliveries (status, attempts, the last error) with user-supplied text shown
as text, and nothing of another user's."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import Watch, create_batch, new_context, new_user_key, sign_in
from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file
from tests.stack import Stack
from tests.webhook_receiver import Receiver, receiving

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiving(default=500) as r:
        yield r


@pytest.fixture(scope="module")
def stack(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        module_db,
        tmp_path_factory.mktemp("portal-webhooks"),
        env={"INFERBATCH_WEBHOOK_ALLOW_PRIVATE": "true"},
    ).start(dedicated=0)
    try:
        yield s
    finally:
        s.close()


def test_the_webhooks_page_lists_endpoints_and_deliveries_as_text(
    browser: Browser, stack: Stack, receiver: Receiver
) -> None:
    alice = new_user_key(stack, "alice")
    url = f"{receiver.url}/hook?name={XSS}"
    client = stack.client(alice)
    created = client.webhooks.create(
        name="<img src=x onerror=alert(2)>", url=url, event_types=["batch.completed"]
    )
    rotated = client.webhooks.rotate_secret(created.id, keep_old_secret_active_for_24_hours=True)
    batch_id = create_batch(stack, chat_file(2), key=alice)
    assert wait_batch(client, batch_id).status == "completed"
    receiver.wait_for(1)
    deliveries = f"{stack.url}/v1/webhook_endpoints/{created.id}/deliveries"
    auth = {"authorization": f"Bearer {alice}"}
    deadline = time.monotonic() + 30
    # the first attempt is recorded just after its answer
    while not httpx.get(deliveries, headers=auth).json()["data"][0]["last_error"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    context = new_context(browser, stack)
    page = context.new_page()
    watch = Watch(page)
    sign_in(page, alice)
    page.get_by_role("link", name="Webhooks").click()
    endpoint = page.get_by_test_id("webhook-endpoint")
    expect(endpoint).to_have_count(1)
    expect(endpoint.get_by_test_id("webhook-url")).to_have_text(url)
    expect(endpoint.get_by_test_id("webhook-name")).to_have_text("<img src=x onerror=alert(2)>")
    expect(endpoint.get_by_test_id("webhook-secret-hint")).to_have_text(
        rotated.signing_secret_hint or ""
    )
    expect(endpoint.get_by_test_id("webhook-previous-secret")).to_be_visible()
    expect(endpoint).to_contain_text("batch.completed")
    row = endpoint.get_by_test_id("webhook-deliveries").locator("tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("batch.completed")
    expect(row).to_contain_text(batch_id)
    expect(row).to_contain_text("pending")  # the receiver answers 500: it is retried
    expect(row).to_contain_text("HTTP 500")
    assert watch.dialogs == [] and watch.errors == []
    assert page.locator("script:not([src]), img").count() == 0
    context.close()

    context = new_context(browser, stack)
    page = context.new_page()
    sign_in(page, new_user_key(stack, "bob"))
    page.goto("/webhooks")
    expect(page.get_by_test_id("no-webhooks")).to_be_visible()
    expect(page.get_by_test_id("webhook-endpoint")).to_have_count(0)
    context.close()
