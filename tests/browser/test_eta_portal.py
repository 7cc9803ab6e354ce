"""The portal shows a batch's estimated completion (batch page and list) and the warning
admission recorded when it accepted a window that looked too short."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import Watch, new_context, screenshot, sign_in
from tests.helpers import chat_file
from tests.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_the_estimate_and_the_admission_warning_are_shown(
    browser: Browser, db_url: str, tmp_path: Path
) -> None:
    # requests of 2 s: the batch is still running while its pages are read
    stack = Stack(
        db_url,
        tmp_path,
        sim_args=("--base-latency-s", "2", "--max-concurrency", "64"),
        env={"INFERBATCH_MIN_COMPLETION_WINDOW": "1m", "INFERBATCH_ADMISSION": "warn"},
    ).start()
    context = new_context(browser, stack)
    try:
        client = stack.client()
        f = client.files.create(file=("in.jsonl", chat_file(2000)), purpose="batch")
        # 2,000 requests at the prior of 30 s cannot finish in 5 minutes even on every
        # dedicated worker: accepted (nothing is measured yet), with a warning
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="5m"
        )
        assert (batch.model_extra or {}).get("warnings")
        page = context.new_page()
        watch = Watch(page)
        sign_in(page)
        page.goto(f"/batches/{batch.id}")
        expect(page.get_by_test_id("batch-warnings")).to_contain_text("window_too_short")
        expect(page.get_by_test_id("batch-warnings")).to_contain_text("would work")
        expect(page.get_by_test_id("estimate")).to_contain_text("Estimated completion in")
        screenshot(page, "eta-batch")
        page.goto("/batches")
        row = page.locator(f'[data-batch-id="{batch.id}"]')
        expect(row.get_by_test_id("estimate")).to_contain_text("ETA in")
        assert watch.errors == [], watch.errors
        client.batches.cancel(batch.id)
    finally:
        context.close()
        stack.close()
