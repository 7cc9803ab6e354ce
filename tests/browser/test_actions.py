"""Portal actions that need an engine under the test's control: retrying a failed request
(the engine fails, then recovers) and cancelling a running batch (a slow engine)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import Watch, create_batch, new_context, screenshot, sign_in
from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file
from tests.stack import Stack, wait_http

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

FAILING = ("--error-rate", "1.0")
SLOW = ("--base-latency-s", "0.5", "--max-concurrency", "2")


class Engine:
    """The stack's engine-sim, restarted on the same port with other behaviour."""

    def __init__(self, stack: Stack, args: tuple[str, ...]) -> None:
        self.stack = stack
        self.args = args

    def use(self, *args: str) -> None:
        if args == self.args:
            return
        assert self.stack.sim_url is not None
        port = self.stack.sim_url.rsplit(":", 1)[1]
        self.stack.stop("engine-sim")
        self.stack.spawn("engine-sim", ["engine-sim", "--port", port, *args])
        wait_http(self.stack.sim_url + "/health", proc=self.stack.procs["engine-sim"])
        self.args = args


@pytest.fixture(scope="module")
def stack(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One attempt per request, so a failing engine fails requests at once; two requests in
    # flight per worker, so most of a batch is still queued when it is cancelled.
    s = Stack(
        module_db,
        tmp_path_factory.mktemp("actions"),
        sim_args=FAILING,
        env={"INFERBATCH_MAX_ATTEMPTS": "1", "INFERBATCH_ENGINE_MAX_IN_FLIGHT": "2"},
    ).start()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def engine(stack: Stack) -> Engine:
    return Engine(stack, FAILING)


@pytest.fixture
def ui(browser: Browser, stack: Stack) -> Iterator[tuple[Page, Watch]]:
    context = new_context(browser, stack)
    page = context.new_page()
    watch = Watch(page)
    sign_in(page)
    yield page, watch
    context.close()
    assert watch.errors == [], watch.errors


def test_retry_a_failed_request_after_the_engine_recovers(
    ui: tuple[Page, Watch], stack: Stack, engine: Engine
) -> None:
    page, _ = ui
    engine.use(*FAILING)
    batch_id = create_batch(stack, chat_file(3, prefix="r"))
    done = wait_batch(stack.client(), batch_id)
    assert done.request_counts is not None and done.request_counts.failed == 3
    engine.use(*SLOW)

    page.goto(f"/batches/{batch_id}")
    row = page.locator('[data-custom-id="r-1"]')
    expect(row).to_contain_text("failed")
    row.get_by_role("link", name="Open").click()
    expect(page.get_by_test_id("request-status")).to_have_text("failed")
    expect(page.get_by_test_id("request-error")).to_be_visible()
    expect(page.get_by_test_id("attempts")).to_contain_text("1")
    screenshot(page, "08-request-failed")

    page.get_by_test_id("retry-request").click()
    expect(page.get_by_test_id("flash")).to_contain_text("sent back to the queue")
    expect(page.get_by_test_id("request-status")).not_to_have_text("failed")

    # The batch reopened; its page follows the retried request to the end, live.
    page.get_by_role("link", name=batch_id).click()
    expect(page.get_by_test_id("batch-status")).to_have_text("completed", timeout=60_000)
    expect(page.locator('[data-custom-id="r-1"]')).to_contain_text("completed")
    expect(page.locator('[data-custom-id="r-0"]')).to_contain_text("failed")
    expect(page.get_by_test_id("count-done")).to_have_text("3")
    page.get_by_role("link", name="r-1", exact=True).click()
    expect(page.get_by_test_id("request-status")).to_have_text("completed")
    expect(page.get_by_test_id("attempts")).to_contain_text("2")
    expect(page.get_by_test_id("output-json")).to_contain_text("[simulated]")


def test_cancel_a_running_batch(ui: tuple[Page, Watch], stack: Stack, engine: Engine) -> None:
    page, watch = ui
    engine.use(*SLOW)
    batch_id = create_batch(stack, chat_file(40, prefix="slow"))
    page.goto(f"/batches/{batch_id}")
    expect(page.get_by_test_id("batch-status")).to_have_text("in progress")
    expect(page.get_by_test_id("counts")).to_contain_text("running")
    screenshot(page, "14-batch-running")
    page.get_by_test_id("cancel-batch").click()
    assert watch.dialogs == ["Cancel this batch? Finished work is kept."]
    expect(page.get_by_test_id("flash")).to_contain_text(re.compile(r"is cancell(ing|ed)"))
    expect(page.get_by_test_id("batch-status")).to_have_text("cancelled", timeout=60_000)
    expect(page.get_by_test_id("cancel-batch")).to_have_count(0)
    done = int(page.get_by_test_id("count-done").inner_text())
    assert done < 40
    expect(page.get_by_test_id("counts")).to_contain_text(f"{40 - done} cancelled")
    expect(page.get_by_test_id("error-preview")).to_contain_text("batch_cancelled")
    screenshot(page, "09-batch-cancelled")
