"""The Batch Portal in a browser: sign-in, the dashboard, uploading and creating a batch and
watching it finish without a reload, downloads, clone, the batch list, escaping of
user-supplied text, CSRF, and other users' batches answering 404."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import (
    PHONE,
    Watch,
    create_batch,
    new_context,
    new_user_key,
    screenshot,
    sign_in,
)
from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file, chat_line, parse_jsonl
from tests.stack import ADMIN_KEY, Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def stack(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Slow enough that a batch of 40 is still running when its page first loads.
    s = Stack(
        module_db,
        tmp_path_factory.mktemp("portal"),
        sim_args=("--base-latency-s", "0.25", "--max-concurrency", "8"),
    ).start()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def ui(browser: Browser, stack: Stack) -> Iterator[tuple[Page, Watch]]:
    """A signed-in admin's page at 1280x800."""
    context = new_context(browser, stack)
    page = context.new_page()
    watch = Watch(page)
    sign_in(page)
    yield page, watch
    context.close()
    assert watch.errors == [], watch.errors


def test_sign_in_checks_the_key_and_sets_a_safe_cookie(browser: Browser, stack: Stack) -> None:
    context = new_context(browser, stack)
    page = context.new_page()
    page.goto("/batches")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fbatches$"))
    screenshot(page, "01-sign-in")

    page.get_by_label("API key").fill("ib-not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("not valid")

    page.get_by_label("API key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/batches$"))
    expect(page.get_by_test_id("who")).to_contain_text("admin")
    (cookie,) = [c for c in context.cookies() if c["name"] == "inferbatch_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert ADMIN_KEY not in cookie["value"]

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login\?signed_out=1$"))
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    context.close()


def test_upload_create_and_watch_a_batch_complete_then_download_it(
    ui: tuple[Page, Watch], tmp_path: Path
) -> None:
    page, _ = ui
    page.goto("/batches/new")
    source = tmp_path / "questions.jsonl"
    source.write_bytes(chat_file(40, prefix="q"))
    page.set_input_files("#file-input", str(source))
    expect(page.get_by_test_id("upload-result")).to_contain_text("questions.jsonl")
    expect(page.get_by_test_id("check-ok")).to_contain_text("40 requests")
    expect(page.get_by_label("Custom priority")).to_be_hidden()
    page.get_by_label("Custom", exact=True).check()
    page.get_by_label("Custom priority").fill("7")
    page.get_by_label("Deduplication").select_option("off")
    page.locator("[name=meta_key]").first.fill("project")
    page.locator("[name=meta_value]").first.fill("portal test")
    screenshot(page, "04-new-batch")
    page.get_by_role("button", name="Create batch").click()

    expect(page).to_have_url(re.compile(r"/batches/batch_\w+$"))
    expect(page.get_by_test_id("flash")).to_contain_text("Batch created")
    first_status = page.get_by_test_id("batch-live").get_attribute("data-status")
    assert first_status in ("validating", "in_progress"), first_status
    page.evaluate("window.__sameDocument = true")
    # Progress arrives by polling: the status turns completed in this same document.
    expect(page.get_by_test_id("batch-status")).to_have_text("completed", timeout=60_000)
    assert page.evaluate("window.__sameDocument") is True
    expect(page.get_by_test_id("count-done")).to_have_text("40")
    expect(page.locator('[data-custom-id="q-0"]')).to_contain_text("completed")
    expect(page.get_by_test_id("timeline")).to_contain_text("40 requests queued")
    expect(page.get_by_test_id("metadata")).to_contain_text("portal test")
    expect(page.get_by_text("medium (7)")).to_be_visible()
    expect(page.get_by_test_id("batch-live")).to_contain_text(re.compile(r"Dedup scope\s*off"))
    expect(page.get_by_test_id("output-preview")).to_contain_text("q-0")
    screenshot(page, "05-batch-details")

    with page.expect_download() as download:
        page.get_by_test_id("download-output").click()
    lines = parse_jsonl(Path(download.value.path()).read_text())
    assert sorted(x["custom_id"] for x in lines) == sorted(f"q-{i}" for i in range(40))
    assert {x["response"]["status_code"] for x in lines} == {200}

    page.get_by_role("link", name="q-3", exact=True).click()
    expect(page.get_by_test_id("custom-id")).to_have_text("q-3")
    expect(page.get_by_test_id("request-status")).to_have_text("completed")
    expect(page.get_by_test_id("input-json")).to_contain_text("hello 3")
    expect(page.get_by_test_id("output-json")).to_contain_text("[simulated]")
    expect(page.get_by_test_id("attempts")).to_contain_text("1")
    screenshot(page, "06-request")


def test_a_bad_file_lists_each_bad_line_and_makes_no_batch(
    ui: tuple[Page, Watch], stack: Stack, tmp_path: Path
) -> None:
    page, _ = ui
    before = len(stack.client().batches.list(limit=100).data)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            [
                chat_line("a"),
                "this is not json",
                chat_line("a"),
                '{"custom_id": "b", "method": "GET", "url": "/v1/chat/completions",'
                ' "body": {"model": "m"}}',
            ]
        )
        + "\n"
    )
    page.goto("/batches/new")
    page.set_input_files("#file-input", str(bad))
    problems = page.get_by_test_id("check-errors")
    expect(problems).to_contain_text("3 problems")
    rows = problems.locator("tbody tr")
    expect(rows.nth(0)).to_contain_text("2")
    expect(rows.nth(0)).to_contain_text("invalid_json_line")
    expect(rows.nth(1)).to_contain_text("Duplicate custom_id 'a' (first on line 1)")
    expect(rows.nth(2)).to_contain_text("method must be POST")
    screenshot(page, "13-new-batch-bad-file")
    page.get_by_role("button", name="Create batch").click()
    expect(page).to_have_url(re.compile(r"/batches/new$"))
    expect(page.get_by_test_id("check-errors")).to_contain_text("3 problems")
    assert len(stack.client().batches.list(limit=100).data) == before


def test_clone_starts_a_new_batch_over_the_same_input(ui: tuple[Page, Watch], stack: Stack) -> None:
    page, _ = ui
    original = create_batch(stack, chat_file(5, prefix="c"), metadata={"project": "clone me"})
    wait_batch(stack.client(), original)
    page.goto(f"/batches/{original}")
    page.get_by_test_id("clone-batch").click()
    expect(page.get_by_test_id("flash")).to_contain_text(f"Cloned {original}")
    clone_id = page.url.rsplit("/", 1)[1]
    assert clone_id.startswith("batch_") and clone_id != original
    expect(page.get_by_test_id("timeline")).to_contain_text(f"cloned from {original}")
    expect(page.get_by_test_id("metadata")).to_contain_text("clone me")
    expect(page.get_by_test_id("batch-status")).to_have_text("completed", timeout=60_000)
    expect(page.get_by_test_id("count-done")).to_have_text("5")


def test_user_supplied_text_is_shown_as_text(ui: tuple[Page, Watch], stack: Stack) -> None:
    page, watch = ui
    content = (
        chat_line(XSS, text="<img src=x onerror=alert(2)>")
        + "\n"
        + chat_line('"><svg onload=alert(3)>')
        + "\n"
    ).encode()
    batch_id = create_batch(
        stack, content, metadata={"<b>note</b>": "<img src=y onerror=alert(4)>"}
    )
    wait_batch(stack.client(), batch_id)
    page.goto(f"/batches/{batch_id}")
    table = page.get_by_test_id("request-table")
    expect(table.get_by_role("link", name=XSS, exact=True)).to_be_visible()
    expect(table.get_by_role("link", name='"><svg onload=alert(3)>', exact=True)).to_be_visible()
    expect(page.get_by_test_id("metadata")).to_contain_text("<img src=y onerror=alert(4)>")
    expect(page.get_by_test_id("metadata")).to_contain_text("<b>note</b>")
    expect(page.get_by_test_id("output-preview")).to_contain_text(XSS)

    page.get_by_label("custom_id").fill(XSS)
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(1)
    table.get_by_role("link", name=XSS, exact=True).click()
    expect(page.get_by_test_id("custom-id")).to_have_text(XSS)
    expect(page.get_by_test_id("input-json")).to_contain_text("<img src=x onerror=alert(2)>")
    screenshot(page, "07-request-with-markup")

    assert watch.dialogs == []
    assert page.locator("script:not([src])").count() == 0
    assert page.locator("img, svg[onload]").count() == 0


def test_another_users_batch_answers_404(browser: Browser, stack: Stack) -> None:
    theirs = create_batch(stack, chat_file(2, prefix="secret"))
    done = wait_batch(stack.client(), theirs)
    bob = new_user_key(stack, "bob")
    context = new_context(browser, stack)
    page = context.new_page()
    sign_in(page, bob)
    response = page.goto(f"/batches/{theirs}")
    assert response is not None and response.status == 404
    expect(page.get_by_test_id("error-title")).to_have_text("Not found")
    expect(page.get_by_test_id("who")).to_contain_text("bob")
    screenshot(page, "12-not-found")
    assert done.output_file_id
    for url in (f"/files/{done.output_file_id}/download", f"/batches/{theirs}/live"):
        assert page.request.get(url).status == 404
    page.goto("/batches")
    expect(page.get_by_test_id("batch-count")).to_have_text("0 batches")
    context.close()


def test_forms_without_the_csrf_token_are_refused(ui: tuple[Page, Watch], stack: Stack) -> None:
    page, _ = ui
    batch_id = create_batch(stack, chat_file(2, prefix="x"))
    wait_batch(stack.client(), batch_id)
    before = len(stack.client().batches.list(limit=100).data)
    for form in ({}, {"csrf_token": "forged"}):
        response = page.request.post(f"/batches/{batch_id}/clone", form=form)
        assert response.status == 403 and "out of date" in response.text()
    page.goto(f"/batches/{batch_id}")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    response = page.request.post(f"/batches/{batch_id}/clone", form={"csrf_token": token or ""})
    assert response.ok
    assert len(stack.client().batches.list(limit=100).data) == before + 1


def test_dashboard_and_batch_list_filters(
    ui: tuple[Page, Watch], browser: Browser, stack: Stack
) -> None:
    page, _ = ui
    high = create_batch(stack, chat_file(4, prefix="h"), metadata={"priority": "10"})
    normal = create_batch(stack, chat_file(3, prefix="n"))
    for batch_id in (high, normal):
        wait_batch(stack.client(), batch_id)

    page.goto("/")
    expect(page.get_by_test_id("health-db")).to_contain_text("ok")
    expect(page.get_by_test_id("engine-health")).to_have_text("reachable")
    expect(page.get_by_test_id("workers-spot")).to_contain_text("1 live")
    expect(page.get_by_test_id("workers-dedicated")).to_contain_text("1 live")
    assert int(page.get_by_test_id("count-completed").inner_text()) >= 2
    assert int(page.get_by_test_id("stat-done").inner_text().replace(",", "")) >= 7
    expect(page.locator("#dash-charts svg.chart-svg rect").first).to_be_visible()
    screenshot(page, "02-dashboard")

    page.goto("/batches")
    page.get_by_label("Priority").select_option("high")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"priority=high"))
    rows = page.get_by_test_id("batch-table").locator("tbody tr")
    ids = rows.evaluate_all("rows => rows.map(r => r.dataset.batchId)")
    assert high in ids and normal not in ids
    page.get_by_label("Priority").select_option("")
    page.get_by_label("Per page").select_option("25")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_test_id("batch-table")).to_be_visible()
    screenshot(page, "03-batches")

    phone = new_context(browser, stack, PHONE)
    small = phone.new_page()
    sign_in(small)
    screenshot(small, "10-phone-dashboard")
    small.goto(f"/batches/{high}")
    expect(small.get_by_test_id("batch-status")).to_have_text("completed")
    screenshot(small, "11-phone-batch")
    # nothing is wider than the phone's screen
    assert small.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    phone.close()
