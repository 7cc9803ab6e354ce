"""Projects and roles through the API app in process (httpx over ASGI, real PostgreSQL):
the Administration API under ``/v1/organization/projects`` with admin and owner keys,
readers refused on every writing route, another project's objects answering 404 and
never listed, and keys that stop at once when revoked, expired, removed or archived."""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
from inferbatch.domain import DEFAULT_PROJECT_ID, Role
from inferbatch.engines.registry import EngineRegistry
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import projects
from tests.helpers import chat_file
from tests.integration.fixtures import make_project

pytestmark = pytest.mark.integration

ADMIN = "ib-admin-key"
T0 = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
"""The app's time: after every row the template and the fixtures wrote."""


@dataclass
class Clock:
    """The app's clock, moved by the test."""

    at: datetime = T0

    def __call__(self) -> datetime:
        return self.at


@dataclass
class Api:
    client: httpx.AsyncClient
    pool: Pool
    clock: Clock
    keys: dict[str, str] = field(default_factory=dict)

    async def call(self, method: str, path: str, key: str | None, **kw: Any) -> httpx.Response:
        headers = kw.pop("headers", {})
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        return await self.client.request(method, path, headers=headers, **kw)

    async def key_of(
        self,
        name: str,
        project_id: str,
        role: Role,
        *,
        expires_at: datetime | None = None,
    ) -> tuple[str, str]:
        """(user id, key) of user ``name``, a ``role`` member of the project."""
        async with self.pool.connection() as conn:
            user = await users.ensure_user(conn, name, is_admin=False)
            _, key = await projects.create_user_key(
                conn, project_id, user.id, role=role, expires_at=expires_at
            )
        return user.id, key


@pytest.fixture
async def api(pool: Pool, db_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with pool.connection() as conn:
        root = await users.ensure_user(conn, "root", is_admin=True)
        await users.add_key(conn, root.id, ADMIN, role="owner")
    clock = Clock()
    settings = Settings(blob_dir=tmp_path, webhook_allow_private=True)
    app: FastAPI = create_app(
        settings,
        db_url,
        LocalBlobStore(tmp_path),
        EngineRegistry.from_specs({}, timeout=1),
        now=clock,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(client, pool, clock)


def _error(answer: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope of ``answer``, checked for its status (and code)."""
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def _ok(answer: httpx.Response) -> Any:
    assert answer.status_code == 200, answer.text
    return answer.json()


# -- the Administration API ---------------------------------------------------------------------


async def test_an_admin_creates_lists_renames_and_archives_projects(api: Api) -> None:
    base = "/v1/organization/projects"
    made = _ok(await api.call("POST", base, ADMIN, json={"name": "Research"}))
    assert made["object"] == "organization.project" and made["id"].startswith("proj_")
    assert (made["name"], made["status"], made["archived_at"]) == ("Research", "active", None)
    listed = _ok(await api.call("GET", base, ADMIN))
    assert listed["object"] == "list"
    assert [p["id"] for p in listed["data"]] == [DEFAULT_PROJECT_ID, made["id"]]
    assert _ok(await api.call("GET", f"{base}/{made['id']}", ADMIN)) == made

    renamed = _ok(await api.call("POST", f"{base}/{made['id']}", ADMIN, json={"name": "R&D"}))
    assert renamed["name"] == "R&D"
    archived = _ok(await api.call("POST", f"{base}/{made['id']}/archive", ADMIN))
    assert archived["status"] == "archived" and archived["archived_at"] is not None
    active = _ok(await api.call("GET", base, ADMIN))
    assert [p["id"] for p in active["data"]] == [DEFAULT_PROJECT_ID]
    every = _ok(await api.call("GET", base, ADMIN, params={"include_archived": "true"}))
    assert [p["id"] for p in every["data"]] == [DEFAULT_PROJECT_ID, made["id"]]
    # an archived project takes no changes; the default one cannot be archived
    _error(await api.call("POST", f"{base}/{made['id']}", ADMIN, json={"name": "x"}), 400)
    _error(await api.call("POST", f"{base}/{DEFAULT_PROJECT_ID}/archive", ADMIN), 400)
    _error(await api.call("POST", base, ADMIN, json={"name": ""}), 400)


async def test_an_admin_sets_a_projects_fair_share_weight_and_an_owner_may_not(
    api: Api,
) -> None:
    base = "/v1/organization/projects"
    mine = await make_project(api.pool, "mine")
    _, owner = await api.key_of("olga", mine, "owner")
    assert _ok(await api.call("GET", f"{base}/{mine}", ADMIN))["weight"] == 1
    weighted = _ok(await api.call("POST", f"{base}/{mine}", ADMIN, json={"weight": 3}))
    assert (weighted["weight"], weighted["name"]) == (3, "mine")
    async with api.pool.connection() as conn:
        cur = await conn.execute("SELECT weight FROM projects WHERE id = %s", (mine,))
        assert await cur.fetchone() == {"weight": 3}
    _error(await api.call("POST", f"{base}/{mine}", owner, json={"weight": 5}), 403)
    _error(await api.call("POST", f"{base}/{mine}", ADMIN, json={"weight": 0}), 400)
    _error(await api.call("POST", f"{base}/{mine}", ADMIN, json={"weight": "heavy"}), 400)
    renamed = _ok(await api.call("POST", f"{base}/{mine}", owner, json={"name": "ours"}))
    assert (renamed["weight"], renamed["name"]) == (3, "ours")


async def test_an_admin_adds_lists_changes_and_removes_project_users(api: Api) -> None:
    project = await make_project(api.pool, "team")
    async with api.pool.connection() as conn:
        erin = await users.ensure_user(conn, "erin", is_admin=False)
    base = f"/v1/organization/projects/{project}/users"
    added = _ok(await api.call("POST", base, ADMIN, json={"user_id": erin.id, "role": "reader"}))
    assert added["object"] == "organization.project.user"
    assert (added["id"], added["name"], added["role"]) == (erin.id, "erin", "reader")
    _error(await api.call("POST", base, ADMIN, json={"user_id": erin.id, "role": "member"}), 409)
    listed = _ok(await api.call("GET", base, ADMIN))
    assert [u["id"] for u in listed["data"]] == [erin.id]
    assert _ok(await api.call("GET", f"{base}/{erin.id}", ADMIN)) == added

    changed = _ok(await api.call("POST", f"{base}/{erin.id}", ADMIN, json={"role": "owner"}))
    assert changed["role"] == "owner"
    bad = _error(await api.call("POST", f"{base}/{erin.id}", ADMIN, json={"role": "boss"}), 400)
    assert bad["param"] == "role"
    removed = _ok(await api.call("DELETE", f"{base}/{erin.id}", ADMIN))
    assert removed == {
        "id": erin.id,
        "object": "organization.project.user.deleted",
        "deleted": True,
    }
    _error(await api.call("GET", f"{base}/{erin.id}", ADMIN), 404, "not_found")
    assert _ok(await api.call("GET", base, ADMIN))["data"] == []


async def test_an_admin_lists_retrieves_and_deletes_keys(api: Api) -> None:
    project = await make_project(api.pool, "team")
    user_id, key = await api.key_of("erin", project, "member")
    base = f"/v1/organization/projects/{project}/api_keys"
    [listed] = _ok(await api.call("GET", base, ADMIN))["data"]
    assert listed["object"] == "organization.project.api_key"
    assert listed["redacted_value"] == key[:7] + "..." and key not in json.dumps(listed)
    assert listed["owner"]["type"] == "user" and listed["owner"]["user"]["id"] == user_id
    assert listed["last_used_at"] is None
    assert _ok(await api.call("GET", f"{base}/{listed['id']}", ADMIN)) == listed

    _ok(await api.call("GET", "/v1/files", key))
    deleted = _ok(await api.call("DELETE", f"{base}/{listed['id']}", ADMIN))
    assert deleted == {
        "id": listed["id"],
        "object": "organization.project.api_key.deleted",
        "deleted": True,
    }
    # the very next request with it is refused, saying why
    refused = _error(await api.call("GET", "/v1/files", key), 401, "api_key_revoked")
    assert "revoked" in refused["message"]
    _error(await api.call("GET", f"{base}/{listed['id']}", ADMIN), 404)
    assert _ok(await api.call("GET", base, ADMIN))["data"] == []


async def test_a_service_account_key_is_shown_once_works_and_stops_with_its_account(
    api: Api,
) -> None:
    project = await make_project(api.pool, "team")
    base = f"/v1/organization/projects/{project}/service_accounts"
    made = _ok(await api.call("POST", base, ADMIN, json={"name": "ci"}))
    assert made["object"] == "organization.project.service_account" and made["role"] == "member"
    key = made["api_key"]["value"]
    assert made["api_key"]["object"] == "organization.project.service_account.api_key"
    uploaded = await api.call(
        "POST",
        "/v1/files",
        key,
        data={"purpose": "batch"},
        files={"file": ("in.jsonl", io.BytesIO(chat_file(1)))},
    )
    file_id = _ok(uploaded)["id"]
    listed = _ok(await api.call("GET", base, ADMIN))["data"]
    assert [a["id"] for a in listed] == [made["id"]] and "api_key" not in listed[0]
    got = _ok(await api.call("GET", f"{base}/{made['id']}", ADMIN))
    assert (got["name"], got["role"]) == ("ci", "member")
    [key_row] = _ok(await api.call("GET", f"/v1/organization/projects/{project}/api_keys", ADMIN))[
        "data"
    ]
    assert key_row["owner"]["type"] == "service_account"
    assert key_row["owner"]["service_account"]["id"] == made["id"]

    deleted = _ok(await api.call("DELETE", f"{base}/{made['id']}", ADMIN))
    assert deleted["deleted"] is True
    _error(await api.call("GET", f"/v1/files/{file_id}", key), 401)
    _error(await api.call("GET", f"{base}/{made['id']}", ADMIN), 404)
    # what it made stays the project's
    assert _ok(await api.call("GET", f"/v1/files/{file_id}", ADMIN))["id"] == file_id


async def test_an_owner_manages_their_project_only_and_members_and_readers_not_at_all(
    api: Api,
) -> None:
    mine = await make_project(api.pool, "mine")
    other = await make_project(api.pool, "other")
    _, owner = await api.key_of("olga", mine, "owner")
    _, member = await api.key_of("mia", mine, "member")
    _, reader = await api.key_of("rita", mine, "reader")
    async with api.pool.connection() as conn:
        newcomer = await users.ensure_user(conn, "nina", is_admin=False)
    base = "/v1/organization/projects"

    added = await api.call(
        "POST", f"{base}/{mine}/users", owner, json={"user_id": newcomer.id, "role": "member"}
    )
    assert _ok(added)["role"] == "member"
    assert len(_ok(await api.call("GET", f"{base}/{mine}/users", owner))["data"]) == 4
    _ok(await api.call("POST", f"{base}/{mine}/service_accounts", owner, json={"name": "bot"}))
    _ok(await api.call("POST", f"{base}/{mine}", owner, json={"name": "mine, renamed"}))
    assert [p["id"] for p in _ok(await api.call("GET", base, owner))["data"]] == [mine]

    # not another project, and nothing only an admin may do
    _error(await api.call("GET", f"{base}/{other}/users", owner), 404, "not_found")
    _error(await api.call("GET", f"{base}/{other}", owner), 404)
    _error(await api.call("POST", base, owner, json={"name": "more"}), 403)
    _error(await api.call("POST", f"{base}/{mine}/archive", owner), 403)
    for key in (member, reader):
        _error(await api.call("GET", f"{base}/{mine}/users", key), 403)
        _error(await api.call("GET", f"{base}/{mine}/api_keys", key), 403)
        _error(
            await api.call(
                "POST", f"{base}/{mine}/users", key, json={"user_id": newcomer.id, "role": "owner"}
            ),
            403,
        )
        _error(
            await api.call("POST", f"{base}/{mine}/service_accounts", key, json={"name": "x"}), 403
        )


@pytest.mark.parametrize(
    "path",
    [
        "/v1/organization/projects/proj_nope",
        "/v1/organization/projects/proj_nope/users",
        f"/v1/organization/projects/{DEFAULT_PROJECT_ID}/users/user_nope",
        f"/v1/organization/projects/{DEFAULT_PROJECT_ID}/api_keys/key_nope",
        f"/v1/organization/projects/{DEFAULT_PROJECT_ID}/service_accounts/svc_acct_nope",
    ],
)
async def test_unknown_project_user_key_or_service_account_ids_are_404s(
    api: Api, path: str
) -> None:
    _error(await api.call("GET", path, ADMIN), 404, "not_found")
    if path.count("/") > 5:
        _error(await api.call("DELETE", path, ADMIN), 404, "not_found")


async def test_adding_an_unknown_user_or_to_an_unknown_project_is_a_404(api: Api) -> None:
    base = "/v1/organization/projects"
    body = {"user_id": "user_nope", "role": "member"}
    _error(await api.call("POST", f"{base}/{DEFAULT_PROJECT_ID}/users", ADMIN, json=body), 404)
    body = {"name": "x"}
    _error(await api.call("POST", f"{base}/proj_nope/service_accounts", ADMIN, json=body), 404)


# -- roles on the object routes -------------------------------------------------------------------


async def _upload(api: Api, key: str, lines: int = 1) -> str:
    answer = await api.call(
        "POST",
        "/v1/files",
        key,
        data={"purpose": "batch"},
        files={"file": ("in.jsonl", io.BytesIO(chat_file(lines)))},
    )
    file_id: str = _ok(answer)["id"]
    return file_id


async def _batch(api: Api, key: str) -> str:
    body = {
        "input_file_id": await _upload(api, key, 2),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    batch_id: str = _ok(await api.call("POST", "/v1/batches", key, json=body))["id"]
    return batch_id


MESSAGE_BATCH = {
    "requests": [
        {
            "custom_id": "a",
            "params": {
                "model": "m",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}],
            },
        }
    ]
}


async def test_a_reader_reads_and_is_refused_every_write_with_a_403(api: Api) -> None:
    _, member = await api.key_of("mia", DEFAULT_PROJECT_ID, "member")
    _, reader = await api.key_of("rita", DEFAULT_PROJECT_ID, "reader")
    file_id = await _upload(api, member)
    batch_id = await _batch(api, member)
    hook = {"name": "h", "url": "http://127.0.0.1:9/hook", "event_types": ["batch.completed"]}
    hook_id = _ok(await api.call("POST", "/v1/webhook_endpoints", member, json=hook))["id"]

    refused = [
        await api.call(
            "POST",
            "/v1/files",
            reader,
            data={"purpose": "batch"},
            files={"file": ("in.jsonl", io.BytesIO(chat_file(1)))},
        ),
        await api.call(
            "POST",
            "/v1/batches",
            reader,
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        ),
        await api.call("POST", f"/v1/batches/{batch_id}/cancel", reader),
        await api.call("POST", f"/v1/batches/{batch_id}/retry", reader),
        await api.call("DELETE", f"/v1/files/{file_id}", reader),
        await api.call("POST", "/v1/webhook_endpoints", reader, json=hook),
        await api.call("DELETE", f"/v1/webhook_endpoints/{hook_id}", reader),
        await api.call("POST", "/v1/uploads", reader, json=_upload_body()),
    ]
    for answer in refused:
        error = _error(answer, 403, "insufficient_permissions")
        assert error["type"] == "permission_error"
    anthropic = await api.call("POST", "/v1/messages/batches", reader, json=MESSAGE_BATCH)
    assert anthropic.status_code == 403
    assert anthropic.json() == {
        "type": "error",
        "error": {"type": "permission_error", "message": anthropic.json()["error"]["message"]},
    }

    # it reads what its project holds, and nothing it was refused happened
    files = _ids(await api.call("GET", "/v1/files", reader))
    assert file_id in files and len(files) == 2  # its own and the batch's input: no third
    assert files == _ids(await api.call("GET", "/v1/files", member))
    assert _ok(await api.call("GET", f"/v1/files/{file_id}", reader))["id"] == file_id
    assert (await api.call("GET", f"/v1/files/{file_id}/content", reader)).status_code == 200
    assert _ok(await api.call("GET", f"/v1/batches/{batch_id}", reader))["status"] == "validating"
    assert [b["id"] for b in _ok(await api.call("GET", "/v1/batches", reader))["data"]] == [
        batch_id
    ]
    assert _ok(await api.call("GET", f"/v1/webhook_endpoints/{hook_id}", reader))["id"] == hook_id
    assert _ok(await api.call("GET", "/v1/messages/batches", reader))["data"] == []


def _ids(answer: httpx.Response) -> list[str]:
    return [o["id"] for o in _ok(answer)["data"]]


def _upload_body(size: int = 3) -> dict[str, Any]:
    return {
        "filename": "in.jsonl",
        "purpose": "batch",
        "bytes": size,
        "mime_type": "application/jsonl",
    }


async def test_another_projects_objects_are_404s_on_every_route_and_never_listed(
    api: Api,
) -> None:
    _, alice = await api.key_of("alice", DEFAULT_PROJECT_ID, "member")
    _, bob = await api.key_of("bob", await make_project(api.pool, "other"), "owner")
    file_id = await _upload(api, alice)
    batch_id = await _batch(api, alice)
    assert await ingest_next(api.pool, _blobs(api), max_requests=100, now=lambda: api.clock.at)
    requests = _ok(await api.call("GET", f"/v1/batches/{batch_id}/requests", alice))["data"]
    request_id = requests[0]["id"]
    upload_id = _ok(await api.call("POST", "/v1/uploads", alice, json=_upload_body()))["id"]
    hook = {"name": "h", "url": "http://127.0.0.1:9/hook", "event_types": ["batch.completed"]}
    hook_id = _ok(await api.call("POST", "/v1/webhook_endpoints", alice, json=hook))["id"]
    message_batch = await api.call("POST", "/v1/messages/batches", alice, json=MESSAGE_BATCH)
    assert message_batch.status_code == 200, message_batch.text
    message_batch_id = message_batch.json()["id"]

    routes = [
        ("GET", f"/v1/files/{file_id}"),
        ("GET", f"/v1/files/{file_id}/content"),
        ("DELETE", f"/v1/files/{file_id}"),
        ("GET", f"/v1/batches/{batch_id}"),
        ("POST", f"/v1/batches/{batch_id}/cancel"),
        ("GET", f"/v1/batches/{batch_id}/output"),
        ("GET", f"/v1/batches/{batch_id}/requests"),
        ("POST", f"/v1/batches/{batch_id}/retry"),
        ("POST", f"/v1/batches/{batch_id}/clone"),
        ("GET", f"/v1/requests/{request_id}"),
        ("POST", f"/v1/requests/{request_id}/retry"),
        ("POST", f"/v1/uploads/{upload_id}/cancel"),
        ("POST", f"/v1/uploads/{upload_id}/complete"),
        ("GET", f"/v1/webhook_endpoints/{hook_id}"),
        ("POST", f"/v1/webhook_endpoints/{hook_id}"),
        ("DELETE", f"/v1/webhook_endpoints/{hook_id}"),
        ("POST", f"/v1/webhook_endpoints/{hook_id}/rotate_secret"),
        ("POST", f"/v1/webhook_endpoints/{hook_id}/test"),
        ("GET", f"/v1/webhook_endpoints/{hook_id}/deliveries"),
    ]
    bodies: dict[str, Any] = {
        f"/v1/uploads/{upload_id}/complete": {"part_ids": []},
        f"/v1/webhook_endpoints/{hook_id}": {"name": "mine now"},
        f"/v1/webhook_endpoints/{hook_id}/rotate_secret": {},
        f"/v1/webhook_endpoints/{hook_id}/test": {"event_type": "batch.completed"},
    }
    for method, path in routes:
        answer = await api.call(method, path, bob, json=bodies.get(path))
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "not_found", (method, path)
    part = await api.call(
        "POST",
        f"/v1/uploads/{upload_id}/parts",
        bob,
        files={"data": ("part", io.BytesIO(b"abc"))},
    )
    assert part.status_code == 404, part.text
    for method, path in [
        ("GET", f"/v1/messages/batches/{message_batch_id}"),
        ("POST", f"/v1/messages/batches/{message_batch_id}/cancel"),
        ("GET", f"/v1/messages/batches/{message_batch_id}/results"),
        ("DELETE", f"/v1/messages/batches/{message_batch_id}"),
    ]:
        answer = await api.call(method, path, bob)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["type"] == "not_found_error"

    for path in ("/v1/files", "/v1/batches", "/v1/webhook_endpoints", "/v1/messages/batches"):
        assert _ids(await api.call("GET", path, bob)) == [], path
        assert _ids(await api.call("GET", path, alice)), path
    # nothing bob was refused happened
    assert _ok(await api.call("GET", f"/v1/batches/{batch_id}", alice))["status"] == "in_progress"
    assert _ok(await api.call("GET", f"/v1/files/{file_id}", alice))["id"] == file_id
    assert _ok(await api.call("GET", f"/v1/webhook_endpoints/{hook_id}", alice))["name"] != (
        "mine now"
    )


def _blobs(api: Api) -> LocalBlobStore:
    transport = api.client._transport
    assert isinstance(transport, httpx.ASGITransport)
    blobs = transport.app.state.inferbatch.blobs  # type: ignore[attr-defined]
    assert isinstance(blobs, LocalBlobStore)
    return blobs


# -- keys that stop -------------------------------------------------------------------------------


async def test_expired_removed_archived_and_unknown_keys_are_401s_that_say_why(api: Api) -> None:
    project = await make_project(api.pool, "team")
    _, expiring = await api.key_of("eve", project, "member", expires_at=T0 + timedelta(hours=1))
    erin_id, removed = await api.key_of("erin", project, "member")
    _, archived = await api.key_of("arno", project, "owner")
    for key in (expiring, removed, archived):
        _ok(await api.call("GET", "/v1/batches", key))

    api.clock.at = T0 + timedelta(hours=1)
    expired = _error(await api.call("GET", "/v1/batches", expiring), 401, "api_key_expired")
    assert "expired" in expired["message"]
    _ok(await api.call("DELETE", f"/v1/organization/projects/{project}/users/{erin_id}", ADMIN))
    _error(await api.call("GET", "/v1/batches", removed), 401, "api_key_revoked")
    _ok(await api.call("GET", "/v1/batches", archived))
    _ok(await api.call("POST", f"/v1/organization/projects/{project}/archive", ADMIN))
    gone = _error(await api.call("GET", "/v1/batches", archived), 401, "project_archived")
    assert "archived" in gone["message"]
    _error(await api.call("GET", "/v1/batches", "ib-nobody"), 401, "invalid_api_key")
    _error(await api.call("GET", "/v1/batches", None), 401, "invalid_api_key")


async def test_last_used_at_is_written_on_use_but_not_on_every_request(api: Api) -> None:
    _, key = await api.key_of("erin", DEFAULT_PROJECT_ID, "member")

    async def last_used() -> int | None:
        found = _ok(
            await api.call("GET", f"/v1/organization/projects/{DEFAULT_PROJECT_ID}/api_keys", ADMIN)
        )
        [row] = [k for k in found["data"] if k["owner"].get("user", {}).get("name") == "erin"]
        value: int | None = row["last_used_at"]
        return value

    assert await last_used() is None
    _ok(await api.call("GET", "/v1/files", key))
    assert await last_used() == int(T0.timestamp())
    api.clock.at = T0 + timedelta(seconds=30)
    _ok(await api.call("GET", "/v1/files", key))
    assert await last_used() == int(T0.timestamp())  # fresh enough: not written again
    api.clock.at = T0 + projects.LAST_USED_EVERY + timedelta(seconds=1)
    _ok(await api.call("GET", "/v1/files", key))
    assert await last_used() == int(api.clock.at.timestamp())


async def _sign_in(api: Api, key: str) -> str:
    """Sign the client into the portal with ``key``; the session's CSRF token."""
    form = await api.client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    signed_in = await api.client.post(
        "/login", data={"api_key": key, "csrf_token": token.group(1), "next": "/batches"}
    )
    assert signed_in.status_code == 303
    page = await api.client.get("/batches")
    assert page.status_code == 200
    found = re.search(r'"X-CSRF-Token": "([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


async def test_a_readers_portal_session_shows_the_project_and_refuses_actions(api: Api) -> None:
    _, member = await api.key_of("mia", DEFAULT_PROJECT_ID, "member")
    _, reader = await api.key_of("rita", DEFAULT_PROJECT_ID, "reader")
    batch_id = await _batch(api, member)
    csrf = await _sign_in(api, reader)
    assert batch_id in (await api.client.get("/batches")).text
    cancel = await api.client.post(f"/batches/{batch_id}/cancel", headers={"x-csrf-token": csrf})
    assert cancel.status_code == 403
    assert _ok(await api.call("GET", f"/v1/batches/{batch_id}", member))["status"] == "validating"
    out = await api.client.post("/logout", headers={"x-csrf-token": csrf})
    assert out.status_code == 303  # signing out is no change to the project

    csrf = await _sign_in(api, member)
    cancelled = await api.client.post(f"/batches/{batch_id}/cancel", headers={"x-csrf-token": csrf})
    assert cancelled.status_code in (200, 303)
    assert _ok(await api.call("GET", f"/v1/batches/{batch_id}", member))["status"] in (
        "cancelling",
        "cancelled",
    )
