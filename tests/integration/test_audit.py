"""The audit log: every change through the API, the portal and the CLI leaves one row,
read back through ``GET /v1/organization/audit_logs`` with OpenAI's filters; rows cannot
be changed or deleted but by the retention purge; readers and other projects cannot read
them; no secret reaches a row or a log line."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from inferbatch.api.app import create_app
from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import audit as audit_rows
from inferbatch.db import users
from inferbatch.db.types import Pool
from inferbatch.domain import DEFAULT_PROJECT_ID
from inferbatch.engines.registry import EngineRegistry
from inferbatch.services import audit
from tests.helpers import chat_line
from tests.integration.fixtures import make_project

pytestmark = pytest.mark.integration


@dataclass
class Api:
    client: httpx.AsyncClient
    keys: dict[str, str]
    ids: dict[str, str]
    other_project: str

    def auth(self, who: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[who]}"}

    async def logs(self, who: str = "root", **params: Any) -> dict[str, Any]:
        answer = await self.client.get(
            "/v1/organization/audit_logs", params=params, headers=self.auth(who)
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


@pytest.fixture
async def api(pool: Pool, db_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The api in process; root is an admin, alice an owner and carol a reader of the
    default project, bob the owner of another project, dave a member of the default one."""
    other = await make_project(pool, "other")
    keys: dict[str, str] = {}
    ids: dict[str, str] = {}
    members = {
        "root": (DEFAULT_PROJECT_ID, "owner"),
        "alice": (DEFAULT_PROJECT_ID, "owner"),
        "carol": (DEFAULT_PROJECT_ID, "reader"),
        "dave": (DEFAULT_PROJECT_ID, "member"),
        "bob": (other, "owner"),
    }
    async with pool.connection() as conn:
        for name, (project, role) in members.items():
            user = await users.ensure_user(conn, name, is_admin=name == "root")
            keys[name] = users.generate_key()
            await users.add_key(conn, user.id, keys[name], project_id=project, role=role)
            ids[name] = user.id
    app: FastAPI = create_app(
        Settings(blob_dir=tmp_path, min_completion_window="1m", webhook_allow_private=True),
        db_url,
        LocalBlobStore(tmp_path),
        EngineRegistry.from_specs({}, timeout=1),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4242))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers={"user-agent": "audit-test/1"}
        ) as client:
            yield Api(client, keys, ids, other)


async def _file(api: Api, who: str = "alice") -> str:
    answer = await api.client.post(
        "/v1/files",
        headers=api.auth(who),
        data={"purpose": "batch"},
        files={"file": ("in.jsonl", chat_line("a").encode() + b"\n")},
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


async def _batch(api: Api, file_id: str, who: str = "alice") -> str:
    answer = await api.client.post(
        "/v1/batches",
        headers=api.auth(who),
        json={
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def _types(page: dict[str, Any]) -> list[str]:
    return [entry["type"] for entry in page["data"]]


async def test_changes_are_recorded_and_read_back_with_each_filter(api: Api) -> None:
    start = int(datetime.now(UTC).timestamp())
    file_id = await _file(api)
    batch_id = await _batch(api, file_id)
    cancel = await api.client.post(f"/v1/batches/{batch_id}/cancel", headers=api.auth("alice"))
    assert cancel.status_code == 200
    created = await api.client.post(
        "/v1/organization/projects", headers=api.auth("root"), json={"name": "audited"}
    )
    project_id = created.json()["id"]
    added = await api.client.post(
        f"/v1/organization/projects/{project_id}/users",
        headers=api.auth("root"),
        json={"user_id": api.ids["dave"], "role": "member"},
    )
    assert added.status_code == 200
    refused = await api.client.post(
        "/v1/batches", headers={"authorization": "Bearer ib-wrongwrongwrongwrongwrong"}, json={}
    )
    assert refused.status_code == 401
    read = await api.client.get("/v1/batches", headers=api.auth("alice"))
    assert read.status_code == 200

    everything = await api.logs(limit=100)
    assert _types(everything) == [
        "batch.created",  # the refused one
        "user.added",
        "project.created",
        "batch.cancelled",
        "batch.created",
        "file.created",
    ]  # newest first; the GET left nothing
    failed, added_row, project_row, cancelled, batch_row, file_row = everything["data"]
    assert batch_row["batch.created"] == {
        "id": batch_id,
        "data": {"method": "POST", "route": "/v1/batches"},
    }
    assert file_row["file.created"]["id"] == file_id
    assert cancelled["batch.cancelled"]["id"] == batch_id
    assert batch_row["result"] == {"status": "succeeded", "http_status": 200, "error_code": None}
    assert batch_row["project"] == {"id": DEFAULT_PROJECT_ID, "name": "Default project"}
    key = batch_row["actor"]["api_key"]
    assert batch_row["actor"]["type"] == "api_key" and key["type"] == "user"
    assert key["user"] == {"id": api.ids["alice"], "email": None, "name": "alice"}
    assert (key["ip_address"], key["user_agent"]) == ("203.0.113.7", "audit-test/1")
    assert key["id"].startswith("key_")
    assert project_row["project.created"]["id"] == project_id
    assert project_row["project"]["id"] == project_id
    assert added_row["user.added"]["id"] == api.ids["dave"]
    assert added_row["project"] == {"id": project_id, "name": "audited"}
    assert failed["result"] == {
        "status": "failed",
        "http_status": 401,
        "error_code": "invalid_api_key",
    }
    assert failed["actor"]["api_key"]["user"] is None
    assert failed["actor"]["api_key"]["redacted_value"] == "ib-wron..."
    assert failed["project"] is None
    assert re.fullmatch(r"audit_log-[0-9a-f]+_[0-9a-f]+", failed["id"])

    by_type = await api.logs(**{"event_types[]": ["batch.created", "file.created"]})
    assert _types(by_type) == ["batch.created", "batch.created", "file.created"]
    by_resource = await api.logs(**{"resource_ids[]": batch_id})
    assert _types(by_resource) == ["batch.cancelled", "batch.created"]
    by_actor = await api.logs(**{"actor_ids[]": api.ids["root"]})
    assert _types(by_actor) == ["user.added", "project.created"]
    by_key = await api.logs(**{"actor_ids[]": key["id"]})
    assert _types(by_key) == ["batch.cancelled", "batch.created", "file.created"]
    by_name = await api.logs(**{"actor_emails[]": "alice"})
    assert len(by_name["data"]) == 3
    by_project = await api.logs(**{"project_ids[]": project_id})
    assert _types(by_project) == ["user.added", "project.created"]
    assert (await api.logs(**{"effective_at[gt]": start + 3600}))["data"] == []
    assert len((await api.logs(**{"effective_at[gte]": start - 1}))["data"]) == 6
    assert (await api.logs(**{"effective_at[lt]": start - 1}))["data"] == []
    assert len((await api.logs(**{"effective_at[lte]": start + 3600}))["data"]) == 6

    ids = [entry["id"] for entry in everything["data"]]
    first = await api.logs(limit=4)
    assert [e["id"] for e in first["data"]] == ids[:4] and first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (ids[0], ids[3])
    rest = await api.logs(limit=4, after=first["last_id"])
    assert [e["id"] for e in rest["data"]] == ids[4:] and rest["has_more"] is False
    back = await api.logs(limit=2, before=rest["first_id"])
    assert [e["id"] for e in back["data"]] == ids[2:4] and back["has_more"] is True
    bad = await api.client.get(
        "/v1/organization/audit_logs", params={"after": "nope"}, headers=api.auth("root")
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"
    too_late = await api.client.get(
        "/v1/organization/audit_logs",
        params={"effective_at[lt]": 8_316_742_015_658_552_320},
        headers=api.auth("root"),
    )
    assert too_late.status_code == 400, too_late.text


async def test_an_owner_reads_only_its_project_and_others_are_refused(api: Api) -> None:
    await _file(api, "alice")
    await _file(api, "bob")
    mine = await api.logs("bob")
    assert [e["project"]["id"] for e in mine["data"]] == [api.other_project]
    asked = await api.logs("bob", **{"project_ids[]": DEFAULT_PROJECT_ID})
    assert asked["data"] == []
    alice = await api.logs("alice")
    assert [e["project"]["id"] for e in alice["data"]] == [DEFAULT_PROJECT_ID]
    for who in ("carol", "dave"):
        answer = await api.client.get("/v1/organization/audit_logs", headers=api.auth(who))
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "permission_denied"
    # a reader's refused change is recorded as failed, with the reader as actor
    refused = await api.client.delete("/v1/files/file-x", headers=api.auth("carol"))
    assert refused.status_code == 403
    latest = (await api.logs(limit=1))["data"][0]
    assert latest["type"] == "file.deleted" and latest["result"]["status"] == "failed"
    assert latest["actor"]["api_key"]["user"]["name"] == "carol"
    assert latest["file.deleted"]["id"] == "file-x"


async def test_rows_refuse_update_and_delete_and_retention_purges_only_old_rows(
    pool: Pool,
) -> None:
    now = datetime.now(UTC)
    async with pool.connection() as conn:
        for age in (400, 366, 10):
            event = audit.cli_event(
                "project.created", project_id=None, object_id=f"p{age}", command="test"
            )
            await audit_rows.append(
                conn,
                audit_rows.Event(
                    **{
                        **{n: getattr(event, n) for n in audit_rows.Event.__slots__},
                        "effective_at": now - timedelta(days=age),
                    }
                ),
            )
    for statement in (
        "UPDATE audit_logs SET type = 'x'",
        "DELETE FROM audit_logs",
        "TRUNCATE audit_logs",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            async with pool.connection() as conn:
                await conn.execute(statement)
    async with pool.connection() as conn:
        assert await audit_rows.purge_step(conn, now - timedelta(days=365), limit=1) == 1
    async with pool.connection() as conn:
        assert await audit_rows.purge_step(conn, now - timedelta(days=365)) == 1
    async with pool.connection() as conn:
        await audit_rows.purge_step(conn, now - timedelta(days=365))
        # the purge's permission ends with its step
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("DELETE FROM audit_logs")
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT object_id FROM audit_logs")
        assert [r["object_id"] for r in await cur.fetchall()] == ["p10"]


async def test_the_scheduler_purges_entries_past_the_audit_retention(
    pool: Pool, tmp_path: Path
) -> None:
    from inferbatch.scheduler.leadership import Leadership
    from inferbatch.scheduler.service import Scheduler

    now = datetime.now(UTC)
    async with pool.connection() as conn:
        for age in (8, 6):
            await audit_rows.append(
                conn,
                audit_rows.Event(
                    type="project.created",
                    actor_type="cli",
                    result="succeeded",
                    object_id=f"p{age}",
                    effective_at=now - timedelta(days=age),
                ),
            )
    settings = Settings(blob_dir=tmp_path, audit_retention="7d")
    sched = Scheduler(settings, pool, LocalBlobStore(tmp_path), Leadership("postgresql://unused"))
    assert await sched.audit() is False
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT object_id FROM audit_logs")
        assert [r["object_id"] for r in await cur.fetchall()] == ["p6"]


def test_a_bad_audit_retention_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        Settings(audit_retention="forever")


async def _sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    return await client.post("/login", data={"api_key": key, "csrf_token": token.group(1)})


def _csrf(html: str) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    return token.group(1)


async def test_portal_sign_in_sign_out_and_a_failed_sign_in_are_recorded(api: Api) -> None:
    refused = await _sign_in(api.client, "ib-not-a-key-not-a-key-not")
    assert refused.status_code == 401
    assert (await _sign_in(api.client, api.keys["alice"])).status_code == 303
    page = await api.client.get("/")
    out = await api.client.post("/logout", data={"csrf_token": _csrf(page.text)})
    assert out.status_code == 303
    entries = (await api.logs())["data"]
    assert [e["type"] for e in entries] == ["logout.succeeded", "login.succeeded", "login.failed"]
    logout, login, failed = entries
    for entry in (logout, login):
        session = entry["actor"]["session"]
        assert entry["actor"]["type"] == "session"
        assert session["user"]["id"] == api.ids["alice"]
        assert (session["ip_address"], session["user_agent"]) == ("203.0.113.7", "audit-test/1")
    assert failed["actor"]["session"]["user"] == {"id": None, "email": None, "name": None}
    assert failed["result"]["http_status"] == 401
    assert login["result"]["http_status"] == 303


async def test_the_portal_audit_page_lists_filters_and_refuses_readers(api: Api) -> None:
    await _file(api, "alice")
    await _file(api, "bob")
    assert (await _sign_in(api.client, api.keys["alice"])).status_code == 303
    html = (await api.client.get("/audit")).text
    rows = re.findall(r'data-testid="audit-row" data-type="([^"]+)"', html)
    assert rows == ["login.succeeded", "file.created"]  # bob's is another project's
    only = (await api.client.get("/audit", params={"type": "file.created"})).text
    assert re.findall(r'data-testid="audit-row" data-type="([^"]+)"', only) == ["file.created"]
    by_actor = (await api.client.get("/audit", params={"actor": "nobody"})).text
    assert 'data-testid="audit-row"' not in by_actor
    first = (await api.client.get("/audit", params={"limit": 1})).text
    more = re.search(r'href="(/audit\?[^"]*after=[^"]+)"', first)
    assert more is not None
    second = (await api.client.get(more.group(1).replace("&amp;", "&"))).text
    assert re.findall(r'data-testid="audit-row" data-type="([^"]+)"', second) == ["file.created"]
    api.client.cookies.clear()
    assert (await _sign_in(api.client, api.keys["carol"])).status_code == 303
    assert (await api.client.get("/audit")).status_code == 403


async def test_user_agents_are_escaped_on_the_portal_page(api: Api) -> None:
    await api.client.post(
        "/v1/files",
        headers={**api.auth("alice"), "user-agent": "<script>alert(1)</script>"},
        data={"purpose": "batch"},
        files={"file": ("in.jsonl", b"x\n")},
    )
    assert (await _sign_in(api.client, api.keys["root"])).status_code == 303
    html = (await api.client.get("/audit")).text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_every_changing_route_has_an_event_type(tmp_path: Path) -> None:
    app = create_app(
        Settings(blob_dir=tmp_path),
        "postgresql://unused",
        LocalBlobStore(tmp_path),
        EngineRegistry.from_specs({}, timeout=1),
    )
    changing = set()
    for included in app.routes:
        for route in getattr(included, "effective_route_contexts", lambda: [])():
            for method in set(route.methods or ()) - {"GET", "HEAD", "OPTIONS"}:
                changing.add((method, route.path))
    assert changing, "no routes found"
    assert sorted(changing - set(audit.EVENT_TYPES)) == []


def _cli(db_url: str, *args: str) -> str:
    env = {**os.environ, "INFERBATCH_DATABASE_URL": db_url}
    done = subprocess.run(
        [sys.executable, "-m", "inferbatch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


async def _dump(pool: Pool) -> str:
    """Every audit row as text: what a secret would have to appear in."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT a::text AS row FROM audit_logs a ORDER BY seq")
        return "\n".join(r["row"] for r in await cur.fetchall())


async def test_cli_changes_are_recorded_with_the_os_user_and_secrets_never_appear(
    api: Api, pool: Pool, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="inferbatch")
    secrets: list[str] = [*api.keys.values()]
    project_id = _cli(db_url, "projects", "create", "cli-made")
    user_key = _cli(db_url, "keys", "create", "--user", "erin", "--project", project_id)
    account_key = _cli(db_url, "keys", "create", "--service-account", "bot", "--role", "owner")
    added = _cli(db_url, "projects", "add-user", project_id, "frank", "--role", "reader")
    assert "reader" in added
    _cli(db_url, "keys", "revoke", user_key[:7])
    secrets += [user_key, account_key]

    entries = (await api.logs(**{"event_types[]": ["api_key.created", "api_key.deleted"]}))["data"]
    assert [e["type"] for e in entries] == ["api_key.deleted", "api_key.created", "api_key.created"]
    revoked, account_created, user_created = entries
    assert revoked["api_key.deleted"]["id"] == user_created["api_key.created"]["id"]
    assert user_created["project"]["id"] == project_id
    assert account_created["project"]["id"] == DEFAULT_PROJECT_ID
    cli = user_created["actor"]
    assert cli["type"] == "cli" and cli["cli"]["os_user"]
    assert user_created["api_key.created"]["data"]["command"] == "keys create"
    made = await api.logs(**{"resource_ids[]": project_id})
    assert _types(made) == ["project.created"]

    # the API's secrets: a service account's key, a webhook endpoint's secret (made and
    # rotated), portal session cookies, Authorization headers
    account = await api.client.post(
        f"/v1/organization/projects/{DEFAULT_PROJECT_ID}/service_accounts",
        headers=api.auth("root"),
        json={"name": "robot"},
    )
    secrets.append(account.json()["api_key"]["value"])
    robot = {"authorization": f"Bearer {secrets[-1]}"}
    assert (await api.client.get("/v1/batches", headers=robot)).status_code == 200
    hook = await api.client.post(
        "/v1/webhook_endpoints",
        headers=api.auth("alice"),
        json={
            "url": "http://127.0.0.1:9/hook",
            "name": "h",
            "event_types": ["batch.completed"],
        },
    )
    assert hook.status_code == 200, hook.text
    hook_body = hook.json()
    secrets += [v for k, v in hook_body.items() if "secret" in k and isinstance(v, str)]
    rotated = await api.client.post(
        f"/v1/webhook_endpoints/{hook_body['id']}/rotate_secret", headers=api.auth("alice")
    )
    secrets += [v for k, v in rotated.json().items() if "secret" in k and isinstance(v, str)]
    assert (await _sign_in(api.client, api.keys["alice"])).status_code == 303
    secrets += [v for v in api.client.cookies.values()]
    page = await api.client.get("/")
    await api.client.post("/logout", data={"csrf_token": _csrf(page.text)})
    await _sign_in(api.client, api.keys["bob"][:-1] + "x")  # a near miss

    secrets = [s for s in secrets if s]
    assert len(secrets) >= 10 and sum(s.startswith("whsec_") for s in secrets) >= 2
    dump = await _dump(pool)
    assert "webhook_endpoint.secret_rotated" in dump and "service_account.created" in dump
    logged = "\n".join(
        [r.getMessage() for r in caplog.records]
        + [json.dumps(r.__dict__, default=str) for r in caplog.records]
    )
    for secret in secrets:
        assert secret not in dump
        assert secret not in logged


async def test_a_change_whose_audit_row_fails_stands_and_the_failure_is_logged(
    api: Api, pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="inferbatch.api.trail")
    async with pool.connection() as conn:
        await conn.execute("ALTER TABLE audit_logs RENAME TO audit_logs_away")
    file_id = await _file(api)
    async with pool.connection() as conn:
        await conn.execute("ALTER TABLE audit_logs_away RENAME TO audit_logs")
    listed = await api.client.get(f"/v1/files/{file_id}", headers=api.auth("alice"))
    assert listed.status_code == 200
    assert "the audit row of POST /v1/files (file.created) was not written" in caplog.text
    assert (await api.logs())["data"] == []
