"""Browser tests: the portal in Debian's Chromium (headless, driven by Playwright) on a real
stack of api, scheduler, worker and engine-sim processes.

Chromium is ``/usr/bin/chromium`` (``apt-get install chromium``); Playwright never
downloads a browser here. Without it these tests are skipped, except under CI, where they
fail. Screenshots go to ``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)

from tests.conftest import with_dbname
from tests.helpers import tenant_key
from tests.stack import ADMIN_KEY, Stack

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one module. Module scope, not session: Playwright's sync API runs an
    event loop in this thread while it is open, which asyncio tests after it cannot share."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def fresh_database(server_url: str, template_url: str) -> Iterator[str]:
    name = f"ib_browser_{secrets.token_hex(6)}"
    template = urlsplit(template_url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def module_db(server_url: str, template_url: str) -> Iterator[str]:
    """One database for the module's stack (its tests look only at their own batches)."""
    yield from fresh_database(server_url, template_url)


def new_context(
    browser: Browser, stack: Stack, viewport: dict[str, int] = DESKTOP
) -> BrowserContext:
    return browser.new_context(
        base_url=stack.url,
        viewport=viewport,
        accept_downloads=True,  # type: ignore[arg-type]
    )


class Watch:
    """What a page did that a test must not miss: dialogs (an executed alert()), uncaught
    script errors and anything the Content-Security-Policy refused."""

    def __init__(self, page: Page) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.errors.append(message.text)

    def _dialog(self, dialog: object) -> None:
        self.dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]


def sign_in(page: Page, key: str = ADMIN_KEY) -> None:
    page.goto("/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    # attached, not visible: on a phone the menu that shows it is collapsed
    expect(page.get_by_test_id("who")).to_be_attached()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def new_user_key(stack: Stack, name: str) -> str:
    """A key of user ``name`` in a project of its own."""
    return tenant_key(stack.env, name)


def create_batch(
    stack: Stack, content: bytes, *, metadata: dict[str, str] | None = None, key: str = ADMIN_KEY
) -> str:
    """A batch made through the REST API (for tests whose subject is not the upload)."""
    client = stack.client(key)
    uploaded = client.files.create(file=("input.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata,
    )
    return batch.id
