"""The cross-tenant matrix, from the app's own route table: every API and portal route
named with another project's ids answers 404 (the API's error shape, the portal's 404
page), every writing route refuses a reader of the objects' own project with a 403, and
every list shows nothing of another project. A route added later and not classified
here fails the test by name."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Mount

from inferbatch.api.deps import READ_METHODS
from inferbatch.db import users
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import projects
from tests.helpers import chat_file
from tests.integration.fixtures import make_project
from tests.integration.test_projects import (
    MESSAGE_BATCH,
    Api,
    _blobs,
    _upload_body,
    api,
)

pytestmark = pytest.mark.integration

__all__ = ["api"]

OUT_OF_SCOPE = {
    ("GET", "/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),  # the session's own: any role signs out
    ("GET", "/v1/models"),  # the deployment's models, no project's objects
    ("GET", "/v1/webhook_event_types"),
    ("GET", "/v1/workers"),  # the fleet is shared by every project
    ("GET", "/login/oidc"),  # single sign-on's start and return (tests/e2e/test_sso.py)
    ("GET", "/login/oidc/callback"),
    ("POST", "/project"),  # a single sign-on session's own choice among its projects
}
"""Routes that hold no project's objects."""

ADMIN_ONLY = {
    ("POST", "/v1/organization/projects"),
    ("POST", "/v1/organization/projects/{project_id}/archive"),
    ("POST", "/v1/organization/projects/{project_id}/quotas"),
}
"""Routes only an admin key may call: 403 for every other key, whatever the id."""

CREATES = {
    ("POST", "/v1/files"),
    ("POST", "/v1/batches"),
    ("POST", "/v1/webhook_endpoints"),
    ("POST", "/v1/uploads"),
    ("POST", "/v1/messages/batches"),
    ("POST", "/batches/new"),
    ("POST", "/files/upload"),
}
"""Routes that make an object in the caller's own project (no id in the path)."""

LISTS = {
    ("GET", "/v1/files"),
    ("GET", "/v1/batches"),
    ("GET", "/v1/webhook_endpoints"),
    ("GET", "/v1/messages/batches"),
    ("GET", "/v1/organization/projects"),
    ("GET", "/v1/organization/costs"),
    ("GET", "/v1/organization/costs.csv"),
    ("GET", "/"),
    ("GET", "/dashboard/stats"),
    ("GET", "/dashboard/charts"),
    ("GET", "/batches"),
    ("GET", "/batches/new"),
    ("GET", "/webhooks"),
    ("GET", "/costs"),
    ("GET", "/costs.csv"),
    ("GET", "/project"),
}
"""Routes that show the caller's project: never a thing of another."""

AUDIT_VIEWS = {("GET", "/v1/organization/audit_logs"), ("GET", "/audit")}
"""The audit log, which records the matrix's own probes as the prober's (their own failed
attempts, naming the ids they tried): checked on their own, before any probe."""

LIST_QUERIES = {
    ("GET", "/v1/organization/costs"): {"start_time": "0"},
    ("GET", "/v1/organization/costs.csv"): {"start_time": "0"},
}
"""The query a list needs."""

QUERY_IDS = {("GET", "/files/check"): {"input_file_id": "file", "endpoint": None}}
"""Routes that take an object id in the query string (parameter: the kind of object)."""


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    portal: bool

    @property
    def params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


def _routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route of the app, through the routers it included."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is None:
            yield route
            continue
        for context in contexts():
            yield context.starlette_route or context.original_route


def app_of(client: httpx.AsyncClient) -> Any:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.app


def app_routes(app: Any) -> list[Route]:
    found = []
    for route in _routes(app.routes):
        if isinstance(route, Mount):
            assert route.path == "/static/portal", route.path
            continue
        methods = getattr(route, "methods", None) or set()
        path = getattr(route, "path", "")
        portal = isinstance(route, APIRoute) and not path.startswith("/v1/")
        for method in sorted(set(methods) - {"HEAD"}):
            found.append(
                Route(method, path, portal and path not in ("/healthz", "/readyz", "/metrics"))
            )
    return found


@dataclass
class Tenants:
    """Project A's objects, and keys: B's owner, A's reader."""

    ids: dict[str, str]
    other: str
    reader: str
    owner: str

    def fill(self, route: Route) -> str:
        path = route.path
        for name in route.params:
            kind = _kind(route, name)
            assert kind in self.ids, f"{route}: no object for path parameter {name}"
            path = path.replace("{" + name + "}", self.ids[kind])
        return path


def _kind(route: Route, param: str) -> str:
    """The kind of object a path parameter names."""
    if param == "batch_id" and route.path.startswith("/v1/messages/"):
        return "message_batch"
    return {
        "file_id": "file",
        "batch_id": "batch",
        "request_id": "request",
        "webhook_endpoint_id": "webhook",
        "upload_id": "upload",
        "project_id": "project",
        "user_id": "user",
        "key_id": "key",
        "account_id": "account",
    }.get(param, param)


async def _tenants(api: Api) -> Tenants:
    a = await make_project(api.pool, "alpha")
    b = await make_project(api.pool, "beta")
    async with api.pool.connection() as conn:
        alice = await users.ensure_user(conn, "alice", is_admin=False)
        rita = await users.ensure_user(conn, "rita", is_admin=False)
        bob = await users.ensure_user(conn, "bob", is_admin=False)
        key_a, owner = await projects.create_user_key(conn, a, alice.id, role="owner")
        _, reader = await projects.create_user_key(conn, a, rita.id, role="reader")
        _, other = await projects.create_user_key(conn, b, bob.id, role="owner")

    async def ok(method: str, path: str, **kw: Any) -> Any:
        answer = await api.call(method, path, owner, **kw)
        assert answer.status_code == 200, (path, answer.text)
        return answer.json()

    upload = {"file": ("in.jsonl", io.BytesIO(chat_file(2)))}
    file_id = (await ok("POST", "/v1/files", data={"purpose": "batch"}, files=upload))["id"]
    batch_body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    batch_id = (await ok("POST", "/v1/batches", json=batch_body))["id"]
    assert await ingest_next(api.pool, _blobs(api), max_requests=100, now=lambda: api.clock.at)
    request_id = (await ok("GET", f"/v1/batches/{batch_id}/requests"))["data"][0]["id"]
    hook = {"name": "h", "url": "http://127.0.0.1:9/hook", "event_types": ["batch.completed"]}
    account = await ok(
        "POST", f"/v1/organization/projects/{a}/service_accounts", json={"name": "bot"}
    )
    ids = {
        "project": a,
        "file": file_id,
        "batch": batch_id,
        "request": str(request_id),
        "upload": (await ok("POST", "/v1/uploads", json=_upload_body()))["id"],
        "webhook": (await ok("POST", "/v1/webhook_endpoints", json=hook))["id"],
        "message_batch": (await ok("POST", "/v1/messages/batches", json=MESSAGE_BATCH))["id"],
        "user": alice.id,
        "key": key_a,
        "account": account["id"],
    }
    return Tenants(ids, other, reader, owner)


BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/organization/projects"): {"json": {"name": "theirs"}},
    ("POST", "/v1/organization/projects/{project_id}/quotas"): {"json": {"queued_requests": 1}},
    ("POST", "/v1/uploads/{upload_id}/complete"): {"json": {"part_ids": []}},
    ("POST", "/v1/uploads/{upload_id}/parts"): {"files": {"data": ("part", b"abc")}},
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint_id}"): {"json": {"name": "mine now"}},
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint_id}/rotate_secret"): {"json": {}},
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint_id}/test"): {
        "json": {"event_type": "batch.completed"}
    },
    ("POST", "/v1/organization/projects/{project_id}"): {"json": {"name": "mine now"}},
    ("POST", "/v1/organization/projects/{project_id}/users"): {
        "json": {"user_id": "{user}", "role": "owner"}
    },
    ("POST", "/v1/organization/projects/{project_id}/users/{user_id}"): {
        "json": {"role": "reader"}
    },
    ("POST", "/v1/organization/projects/{project_id}/service_accounts"): {
        "json": {"name": "theirs"}
    },
}
"""A valid body for each writing route that needs one, so only the ids decide."""


def _body(route: Route, tenants: Tenants) -> dict[str, Any]:
    body = BODIES.get((route.method, route.path), {})
    if "json" in body:
        json = {k: (tenants.ids["user"] if v == "{user}" else v) for k, v in body["json"].items()}
        return {"json": json}
    return dict(body)


async def _signed_in(api: Api, key: str) -> httpx.AsyncClient:
    """A client of the same app with a portal session of ``key``."""
    client = httpx.AsyncClient(transport=api.client._transport, base_url="http://api")
    form = await client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    answer = await client.post("/login", data={"api_key": key, "csrf_token": token.group(1)})
    assert answer.status_code == 303, answer.text
    page = await client.get("/batches")
    csrf = re.search(r'"X-CSRF-Token": "([^"]+)"', page.text)
    assert csrf is not None
    client.headers["x-csrf-token"] = csrf.group(1)
    return client


def _is_not_found(route: Route, answer: httpx.Response) -> bool:
    if answer.status_code != 404:
        return False
    if route.portal:
        return "Not found" in answer.text
    error = answer.json()["error"]
    if route.path.startswith("/v1/messages/"):
        return bool(error["type"] == "not_found_error")
    return bool(error["code"] == "not_found")


async def test_every_route_answers_another_projects_ids_404_and_a_readers_writes_403(
    api: Api,
) -> None:
    tenants = await _tenants(api)
    other_portal = await _signed_in(api, tenants.other)
    reader_portal = await _signed_in(api, tenants.reader)
    owner_portal = await _signed_in(api, tenants.owner)
    portals = {tenants.other: other_portal, tenants.reader: reader_portal}
    portals[tenants.owner] = owner_portal
    unclassified: list[Route] = []
    leaks: list[tuple[Route, int, str]] = []
    for route in app_routes(app_of(api.client)):
        key = (route.method, route.path)
        if key in OUT_OF_SCOPE or key in AUDIT_VIEWS:
            continue

        async def call(who: str, path: str, route: Route = route, **kw: Any) -> httpx.Response:
            if route.portal:
                return await portals[who].request(route.method, path, **kw)
            return await api.call(route.method, path, who, **kw)

        if route.method not in READ_METHODS:
            refused = await call(tenants.reader, tenants.fill(route), **_body(route, tenants))
            if refused.status_code != 403:
                leaks.append((route, refused.status_code, "reader"))
        if key in ADMIN_ONLY:
            answer = await call(tenants.other, tenants.fill(route), **_body(route, tenants))
            if answer.status_code != 403:
                leaks.append((route, answer.status_code, "admin only"))
        elif key in LISTS:
            answer = await call(tenants.other, route.path, params=LIST_QUERIES.get(key))
            assert answer.status_code == 200, (route, answer.text)
            shown = [kind for kind, id_ in tenants.ids.items() if id_ in answer.text]
            if shown:
                leaks.append((route, answer.status_code, f"lists {shown}"))
        elif key in QUERY_IDS:
            params = {
                name: tenants.ids[kind] if kind else "/v1/chat/completions"
                for name, kind in QUERY_IDS[key].items()
            }
            answer = await call(tenants.other, route.path, params=params)
            if not _is_not_found(route, answer):
                leaks.append((route, answer.status_code, "query id"))
        elif route.params:
            answer = await call(tenants.other, tenants.fill(route), **_body(route, tenants))
            if not _is_not_found(route, answer):
                leaks.append((route, answer.status_code, answer.text[:200]))
            if route.method == "GET":  # the ids are good ones: their project finds them
                mine = await call(tenants.owner, tenants.fill(route))
                assert mine.status_code in (200, 400), (route, mine.text[:300])
        elif key not in CREATES:
            unclassified.append(route)
    for client in portals.values():
        await client.aclose()
    assert unclassified == [], f"routes the matrix does not cover: {unclassified}"
    assert leaks == [], "\n".join(map(str, leaks))


async def test_creates_naming_another_projects_objects_are_404s(api: Api) -> None:
    tenants = await _tenants(api)
    body = {
        "input_file_id": tenants.ids["file"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    answer = await api.call("POST", "/v1/batches", tenants.other, json=body)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    portal = await _signed_in(api, tenants.other)
    form = {**body, "priority": "normal"}
    page = await portal.post("/batches/new", data=form)
    assert page.status_code == 404, page.text
    await portal.aclose()
    listed = await api.call("GET", "/v1/batches", tenants.other)
    assert listed.json()["data"] == []  # nothing was made


async def test_the_audit_log_shows_another_project_nothing_but_its_own_attempts(
    api: Api,
) -> None:
    """An owner of project B reads B's audit log through the API and the portal: nothing of
    A's; after B probes one of A's ids, the record of that failed attempt is B's own."""
    tenants = await _tenants(api)
    portal = await _signed_in(api, tenants.other)
    for path in ("/v1/organization/audit_logs", "/audit"):
        route = Route("GET", path, portal=path == "/audit")
        answer = await (portal.get(path) if route.portal else api.call("GET", path, tenants.other))
        assert answer.status_code == 200, answer.text
        shown = [kind for kind, id_ in tenants.ids.items() if id_ in answer.text]
        assert shown == [], (path, shown)
    probe = await api.call("DELETE", f"/v1/files/{tenants.ids['file']}", tenants.other)
    assert probe.status_code == 404
    listed = await api.call("GET", "/v1/organization/audit_logs", tenants.other)
    mentions = [e for e in listed.json()["data"] if tenants.ids["file"] in str(e)]
    assert mentions, "the probe was not recorded"
    assert all(e["result"]["status"] == "failed" for e in mentions), mentions
    seen = {e["project"]["id"] for e in listed.json()["data"] if e["project"]}
    assert len(seen) == 1 and tenants.ids["project"] not in seen, seen
    await portal.aclose()
