"""Protections of the API and the portal, through the app in process (httpx over ASGI,
real PostgreSQL): failed authentication limited per address and key prefix (shared by
replicas through the database), bodies and headers over their limits, and the portal's
CSRF checks, escaping, session fixation, framing headers and sign-out."""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from inferbatch.api.app import create_app
from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import users
from inferbatch.db.types import Pool
from inferbatch.domain import DEFAULT_PROJECT_ID
from inferbatch.engines.registry import EngineRegistry
from inferbatch.portal.session import SESSION_COOKIE
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import projects
from tests.helpers import chat_line
from tests.integration.fixtures import make_project
from tests.integration.test_projects import MESSAGE_BATCH, T0, Clock
from tests.integration.test_tenancy_matrix import app_of, app_routes

pytestmark = pytest.mark.integration


@asynccontextmanager
async def running(
    db_url: str, tmp_path: Path, clock: Clock, **settings: Any
) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """An api app on the test database; yields a maker of clients (from an address)."""
    app: FastAPI = create_app(
        Settings(blob_dir=tmp_path, webhook_allow_private=True, **settings),
        db_url,
        LocalBlobStore(tmp_path),
        EngineRegistry.from_specs({}, timeout=1),
        now=clock,
    )
    clients: list[httpx.AsyncClient] = []

    def client(address: str = "127.0.0.1", key: str | None = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 1234))
        headers = {"authorization": f"Bearer {key}"} if key else {}
        made = httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers)
        clients.append(made)
        return made

    async with app.router.lifespan_context(app):
        yield client
        for made in clients:
            await made.aclose()


async def _key(
    pool: Pool, name: str, project: str = DEFAULT_PROJECT_ID, role: Any = "member"
) -> str:
    async with pool.connection() as conn:
        user = await users.ensure_user(conn, name, is_admin=False)
        _, key = await projects.create_user_key(conn, project, user.id, role=role)
    return key


async def _last_used(pool: Pool, key: str) -> Any:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT last_used_at FROM api_keys WHERE prefix = %s", (key[:7],))
        row = await cur.fetchone()
    assert row is not None
    return row["last_used_at"]


def _limited(answer: httpx.Response) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert 1 <= int(answer.headers["retry-after"]) <= 60


# -- failed authentication ----------------------------------------------------------------------


async def test_failures_from_one_address_are_limited_before_any_key_lookup(
    pool: Pool, db_url: str, tmp_path: Path
) -> None:
    good = await _key(pool, "alice")
    clock = Clock()
    async with running(db_url, tmp_path, clock, auth_failures_per_address=3) as client:
        guesser = client("10.0.0.1")
        for n in range(3):
            wrong = await guesser.get(
                "/v1/batches", headers={"authorization": f"Bearer ib-w{n}rong"}
            )
            assert wrong.status_code == 401
        # now even the right key is refused from that address, without being looked up
        _limited(await guesser.get("/v1/batches", headers={"authorization": f"Bearer {good}"}))
        anthropic = await guesser.get("/v1/messages/batches", headers={"x-api-key": good})
        assert anthropic.status_code == 429 and "retry-after" in anthropic.headers
        assert anthropic.json()["error"]["type"] == "rate_limit_error"
        assert await _last_used(pool, good) is None
        # another address is not limited; the first is again once its window has passed
        assert (await client("10.0.0.2", good).get("/v1/batches")).status_code == 200
        clock.at = T0 + timedelta(seconds=61)
        assert (await client("10.0.0.1", good).get("/v1/batches")).status_code == 200


async def test_failures_with_one_key_prefix_are_limited_from_any_address(
    pool: Pool, db_url: str, tmp_path: Path
) -> None:
    clock = Clock()
    async with running(db_url, tmp_path, clock, auth_failures_per_key_prefix=2) as client:
        for n in range(2):
            answer = await client(f"10.0.1.{n}", f"ib-abcd-guess{n}").get("/v1/files")
            assert answer.status_code == 401
        _limited(await client("10.0.1.9", "ib-abcd-guess9").get("/v1/files"))
        assert (await client("10.0.1.9", "ib-wxyz-guess").get("/v1/files")).status_code == 401


async def test_replicas_share_the_failure_counts(pool: Pool, db_url: str, tmp_path: Path) -> None:
    clock = Clock()
    limits = {"auth_failures_per_address": 3}
    async with (
        running(db_url, tmp_path / "a", clock, **limits) as one,
        running(db_url, tmp_path / "b", clock, **limits) as two,
    ):
        for n in range(2):
            assert (await one("10.0.2.1", f"ib-one{n}").get("/v1/files")).status_code == 401
        # the third failure is the limit's, though it is this replica's first
        assert (await two("10.0.2.1", "ib-two0").get("/v1/files")).status_code == 401
        _limited(await two("10.0.2.1", "ib-two1").get("/v1/files"))


async def test_portal_sign_in_failures_are_limited_too(
    pool: Pool, db_url: str, tmp_path: Path
) -> None:
    good = await _key(pool, "alice")
    async with running(db_url, tmp_path, Clock(), auth_failures_per_address=2) as client:
        browser = client("10.0.3.1")
        for n in range(2):
            answer = await _sign_in_answer(browser, f"ib-nope{n}")
            assert answer.status_code == 401
        limited = await _sign_in_answer(browser, good)
        assert limited.status_code == 429 and "try again later" in limited.text
        assert int(limited.headers["retry-after"]) >= 1
        assert (await _sign_in_answer(client("10.0.3.2"), good)).status_code == 303


# -- sizes --------------------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_a_413_and_files_keep_their_own_limit(
    pool: Pool, db_url: str, tmp_path: Path
) -> None:
    good = await _key(pool, "alice")
    async with running(db_url, tmp_path, Clock(), max_json_body_bytes=2048) as client:
        api = client(key=good)
        big = {
            "input_file_id": "file-x",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"note": "x" * 4096},
        }
        answer = await api.post("/v1/batches", json=big)
        assert answer.status_code == 413
        error = answer.json()["error"]
        assert error["code"] == "request_too_large" and "2048" in error["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as it streams
            yield json.dumps(big).encode()[:1500]
            yield json.dumps(big).encode()[1500:]

        streamed = await api.post(
            "/v1/webhook_endpoints", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413, streamed.text
        assert streamed.json()["error"]["code"] == "request_too_large"
        assert (await api.get("/v1/batches")).json()["data"] == []

        lines = "".join(chat_line(f"r{n}", "hello " * 40) + "\n" for n in range(40)).encode()
        assert len(lines) > 2048
        uploaded = await api.post(
            "/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", io.BytesIO(lines))}
        )
        assert uploaded.status_code == 200, uploaded.text
        many = {
            "requests": [dict(MESSAGE_BATCH["requests"][0], custom_id=f"c{n}") for n in range(40)]
        }
        assert len(json.dumps(many)) > 2048
        created = await api.post("/v1/messages/batches", json=many)
        assert created.status_code == 200, created.text


async def test_headers_over_the_limit_are_a_431(pool: Pool, db_url: str, tmp_path: Path) -> None:
    good = await _key(pool, "alice")
    async with running(db_url, tmp_path, Clock(), max_header_bytes=4096) as client:
        api = client(key=good)
        answer = await api.get("/v1/batches", headers={"x-padding": "p" * 5000})
        assert answer.status_code == 431
        assert answer.json()["error"]["code"] == "request_header_fields_too_large"
        assert (await api.get("/v1/batches", headers={"x-padding": "p" * 1000})).status_code == 200


# -- the portal ---------------------------------------------------------------------------------


async def _sign_in_answer(browser: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await browser.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    return await browser.post("/login", data={"api_key": key, "csrf_token": token.group(1)})


async def _signed_in(browser: httpx.AsyncClient, key: str) -> str:
    """Sign ``browser`` in; the session's CSRF token."""
    assert (await _sign_in_answer(browser, key)).status_code == 303
    page = await browser.get("/batches")
    assert page.status_code == 200
    found = re.search(r'"X-CSRF-Token": "([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


async def test_every_portal_post_without_this_sessions_csrf_token_is_refused(
    pool: Pool, db_url: str, tmp_path: Path
) -> None:
    good = await _key(pool, "alice")
    async with running(db_url, tmp_path, Clock()) as client:
        browser = client()
        await _signed_in(browser, good)
        other = client()
        forged = await _signed_in(other, await _key(pool, "mallory"))
        posts = [r for r in app_routes(app_of(browser)) if r.portal and r.method == "POST"]
        assert {r.path for r in posts} >= {"/login", "/logout", "/batches/new"}
        for route in posts:
            path = route.path.replace("{batch_id}", "batch_x").replace("{request_id}", "1")
            for headers in ({}, {"x-csrf-token": "forged"}, {"x-csrf-token": forged}):
                answer = await browser.post(path, headers=headers, data={"csrf_token": "x"})
                assert answer.status_code == 403, (path, headers, answer.status_code)
        # still signed in: nothing above signed the session out
        assert (await browser.get("/batches")).status_code == 200


XSS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


async def test_user_controlled_fields_are_shown_escaped_on_every_page(
    pool: Pool, db_url: str, tmp_path: Path
) -> None:
    payload = XSS[0] + XSS[1]
    project = await make_project(pool, payload)
    key = await _key(pool, "alice" + payload, project, "owner")
    async with running(db_url, tmp_path, Clock()) as client:
        api = client(key=key)
        lines = "".join(chat_line(payload + str(n), payload) + "\n" for n in range(2)).encode()
        upload = {"file": (payload + ".jsonl", io.BytesIO(lines))}
        file_id = (await api.post("/v1/files", data={"purpose": "batch"}, files=upload)).json()[
            "id"
        ]
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"note": payload, payload[:60]: "key"},
        }
        created = await api.post("/v1/batches", json=body)
        assert created.status_code == 200, created.text
        batch_id = created.json()["id"]
        hook = {
            "name": payload,
            "url": "http://127.0.0.1:9/hook?q=" + XSS[1].replace(" ", "%20"),
            "event_types": ["batch.completed"],
        }
        assert (await api.post("/v1/webhook_endpoints", json=hook)).status_code == 200
        blobs = app_of(api).state.inferbatch.blobs
        assert await ingest_next(pool, blobs, max_requests=100, now=Clock())
        request_id = (await api.get(f"/v1/batches/{batch_id}/requests")).json()["data"][0]["id"]

        browser = client()
        await _signed_in(browser, key)
        pages = [
            "/",
            "/batches",
            f"/batches/{batch_id}",
            f"/batches/{batch_id}/requests",
            f"/batches/{batch_id}/live",
            f"/requests/{request_id}",
            "/batches/new",
            "/webhooks",
            "/costs",
            f"/files/check?input_file_id={file_id}&endpoint=/v1/chat/completions",
        ]
        escaped = 0
        for path in pages:
            page = await browser.get(path)
            assert page.status_code == 200, (path, page.text[:300])
            for raw in XSS:
                assert raw not in page.text, path
            escaped += page.text.count("&lt;script&gt;alert(1)&lt;/script&gt;")
        assert escaped >= 5  # the payload is shown, escaped, not dropped


async def test_portal_pages_forbid_framing_and_sniffing(
    pool: Pool, db_url: str, tmp_path: Path
) -> None:
    good = await _key(pool, "alice")
    async with running(db_url, tmp_path, Clock()) as client:
        browser = client()
        pages = [await browser.get("/login")]
        await _signed_in(browser, good)
        pages += [await browser.get(p) for p in ("/", "/batches", "/batches/batch_nope")]
        assert [p.status_code for p in pages] == [200, 200, 200, 404]
        for page in pages:
            assert page.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            assert page.headers["x-content-type-options"] == "nosniff"


async def test_a_session_cookie_from_before_sign_in_is_worth_nothing_after(
    pool: Pool, db_url: str, tmp_path: Path
) -> None:
    good = await _key(pool, "alice")
    async with running(db_url, tmp_path, Clock()) as client:
        browser = client()
        await browser.get("/login")
        fixed = browser.cookies[SESSION_COOKIE]  # what an attacker could have planted
        await _signed_in(browser, good)
        assert browser.cookies[SESSION_COOKIE] != fixed
        attacker = client()
        attacker.cookies.set(SESSION_COOKIE, fixed)
        answer = await attacker.get("/batches")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


async def test_signing_out_ends_the_session_even_for_a_kept_cookie(
    pool: Pool, db_url: str, tmp_path: Path
) -> None:
    good = await _key(pool, "alice")
    clock = Clock()
    async with (
        running(db_url, tmp_path, clock) as client,
        running(db_url, tmp_path / "replica", clock) as replica,
    ):
        browser = client()
        csrf = await _signed_in(browser, good)
        kept = browser.cookies[SESSION_COOKIE]
        out = await browser.post("/logout", headers={"x-csrf-token": csrf})
        assert out.status_code == 303
        for maker in (client, replica):  # every replica refuses it
            thief = maker()
            thief.cookies.set(SESSION_COOKIE, kept)
            answer = await thief.get("/batches")
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
            login = await thief.get("/login")
            assert login.status_code == 200  # the sign-in page, not a redirect loop
        # signing in again works, and a fresh session is not affected
        assert await _signed_in(client(), good)
