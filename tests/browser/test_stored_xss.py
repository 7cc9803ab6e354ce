"""Stored XSS in a browser: a project, its service account, a file, its requests, a batch's
metadata and a webhook endpoint carry script and attribute-breaking payloads in every field
a user controls; every portal page that shows them runs no script of theirs (no dialog
fires, the policy refuses nothing) and shows the payload as text."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser

from tests.browser.conftest import Watch, new_context, sign_in
from tests.helpers import chat_line
from tests.stack import ADMIN_KEY, Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(2)>'
PAYLOAD = SCRIPT + ATTRIBUTE


@pytest.fixture(scope="module")
def stack(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        module_db,
        tmp_path_factory.mktemp("portal-xss"),
        env={"INFERBATCH_WEBHOOK_ALLOW_PRIVATE": "true"},
    ).start(dedicated=0)
    try:
        yield s
    finally:
        s.close()


def _seed(stack: Stack) -> tuple[str, str, str]:
    """A project and everything in it named with the payload: (key, batch id, request id)."""
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    base = stack.url + "/v1/organization/projects"
    project = httpx.post(base, headers=admin, json={"name": PAYLOAD}).json()["id"]
    account = httpx.post(
        f"{base}/{project}/service_accounts", headers=admin, json={"name": PAYLOAD}
    ).json()
    key: str = account["api_key"]["value"]
    client = stack.client(key)
    lines = "".join(chat_line(f"{PAYLOAD}{n}", PAYLOAD) + "\n" for n in range(2)).encode()
    uploaded = client.files.create(file=(PAYLOAD + ".jsonl", lines), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"note": PAYLOAD, "x" + ATTRIBUTE[:40]: PAYLOAD},
    )
    hook = httpx.post(
        stack.url + "/v1/webhook_endpoints",
        headers={"authorization": f"Bearer {key}"},
        json={
            "name": PAYLOAD,
            "url": "http://127.0.0.1:9/h?q=%22%3E%3Cimg%20src=x%20onerror=alert(3)%3E",
            "event_types": ["batch.completed"],
        },
    )
    assert hook.status_code == 200, hook.text
    for _ in range(100):
        found = httpx.get(
            f"{stack.url}/v1/batches/{batch.id}/requests",
            headers={"authorization": f"Bearer {key}"},
        ).json()["data"]
        if found:
            return key, batch.id, str(found[0]["id"])
        time.sleep(0.2)  # the scheduler splits the batch meanwhile
    raise AssertionError("the batch was never split into requests")


def test_no_user_controlled_field_runs_as_script_on_any_page(
    stack: Stack, browser: Browser
) -> None:
    key, batch_id, request_id = _seed(stack)
    context = new_context(browser, stack)
    page = context.new_page()
    watch = Watch(page)
    sign_in(page, key)
    for path in (
        "/",
        "/batches",
        f"/batches/{batch_id}",
        f"/requests/{request_id}",
        "/batches/new",
        "/webhooks",
        "/costs",
    ):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        assert page.locator("img[src=x]").count() == 0, path
        assert watch.dialogs == [], path
    page.goto(f"/batches/{batch_id}")
    assert page.get_by_text(SCRIPT).count() >= 1  # shown as text, not dropped
    page.goto("/webhooks")
    assert page.get_by_text(PAYLOAD).count() >= 1
    assert watch.dialogs == [] and watch.errors == []
    context.close()
