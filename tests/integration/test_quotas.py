"""Per-project quotas: each refuses new work with a 429 naming the quota, its limit and its
use; the use goes back down as requests settle and batches end; a limit below the use
blocks only new work; racing creates do not both pass."""

from __future__ import annotations

import asyncio
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
import orjson
import pytest
from fastapi import FastAPI

from inferbatch.api.app import create_app
from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import requests as queue
from inferbatch.db import users
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.engines.registry import EngineRegistry
from inferbatch.errors import QuotaExceeded
from inferbatch.scheduler.finalize import finish_ready
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import batches as batch_service
from inferbatch.services import quotas
from tests.helpers import chat_file
from tests.integration.fixtures import fold_counters, make_project, make_user

pytestmark = pytest.mark.integration

MINUTE = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
THREE = chat_file(3)
"""Three chat requests; each estimated at 3 input tokens ("user", "hello i": 11 characters)
plus max_tokens 4."""
THREE_TOKENS = 3 * (3 + 4)


@dataclass
class Api:
    client: httpx.AsyncClient
    project: str
    clock: list[datetime]

    async def call(self, method: str, path: str, key: str = "k-member", **kw: Any) -> Any:
        return await self.client.request(
            method, path, headers={"Authorization": f"Bearer {key}"}, **kw
        )

    async def upload(self, content: bytes = THREE) -> httpx.Response:
        return await self.call(
            "POST", "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
        )

    async def create(self, file_id: str) -> httpx.Response:
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        return await self.call("POST", "/v1/batches", json=body)

    async def batch(self, content: bytes = THREE) -> str:
        uploaded = await self.upload(content)
        assert uploaded.status_code == 200, uploaded.text
        created = await self.create(uploaded.json()["id"])
        assert created.status_code == 200, created.text
        return str(created.json()["id"])

    async def set(self, **limits: int | None) -> dict[str, Any]:
        path = f"/v1/organization/projects/{self.project}/quotas"
        answer = await self.call("POST", path, key="k-root", json=limits)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    async def usage(self) -> dict[str, int]:
        answer = await self.call("GET", f"/v1/organization/projects/{self.project}/quotas")
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["usage"])


@pytest.fixture
async def api(pool: Pool, db_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The api app in process; a project with a member's key (``k-member``), another
    project's member (``k-other``) and an admin (``k-root``); a clock tests may move."""
    project, other = await make_project(pool, "quoted"), await make_project(pool, "other")
    async with pool.connection() as conn:
        for name, key, of in (("mia", "k-member", project), ("olaf", "k-other", other)):
            user = await users.ensure_user(conn, name, is_admin=False)
            await users.add_key(conn, user.id, key, project_id=of)
        root = await users.ensure_user(conn, "root", is_admin=True)
        await users.add_key(conn, root.id, "k-root", project_id=project, role="owner")
    clock = [MINUTE]
    app: FastAPI = create_app(
        Settings(blob_dir=tmp_path),
        db_url,
        LocalBlobStore(tmp_path),
        EngineRegistry.from_specs({}, timeout=1),
        now=lambda: clock[0],
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(client, project, clock)


def _blobs(root: Path) -> int:
    return len([p for p in root.rglob("*") if p.is_file()])


def _refusal(answer: httpx.Response, quota: str) -> str:
    assert answer.status_code == 429, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "rate_limit_exceeded",
        "quota_exceeded",
        quota,
    )
    return str(error["message"])


async def test_members_read_the_quotas_admins_set_them_and_unknown_projects_are_404(
    api: Api,
) -> None:
    path = f"/v1/organization/projects/{api.project}/quotas"
    read = (await api.call("GET", path)).json()
    assert read["object"] == "organization.project.quotas" and read["updated_at"] is None
    assert set(read["limits"].values()) == {None} and set(read["usage"].values()) == {0}
    assert (await api.call("POST", path, json={"queued_requests": 1})).status_code == 403
    assert (await api.call("GET", path, key="k-other")).status_code == 404
    set_ = await api.set(queued_requests=10, stored_bytes=1000)
    assert set_["limits"]["queued_requests"] == 10 and set_["limits"]["stored_bytes"] == 1000
    cleared = await api.set(queued_requests=None)  # the others are kept
    assert cleared["limits"]["queued_requests"] is None
    assert cleared["limits"]["stored_bytes"] == 1000
    for method in ("GET", "POST"):
        answer = await api.call(
            method, "/v1/organization/projects/proj_nope/quotas", key="k-root", json={}
        )
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"
    bad = await api.call("POST", path, key="k-root", json={"stored_bytes": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "stored_bytes"


@pytest.mark.parametrize(
    ("quota", "limit", "message"),
    [
        ("queued_requests", 5, "is 5; 3 requests are in use and this batch adds 3."),
        (
            "enqueued_tokens",
            THREE_TOKENS + 10,
            f"is {THREE_TOKENS + 10}; {THREE_TOKENS} tokens are in use and this batch adds "
            f"{THREE_TOKENS}.",
        ),
        ("batches_in_progress", 1, "is 1; 1 batches are in use and this batch adds 1."),
        (
            "creates_per_minute",
            1,
            "is 1; 1 batches were created this minute and this batch adds 1.",
        ),
    ],
)
async def test_each_create_quota_refuses_naming_its_limit_and_use(
    api: Api, quota: str, limit: int, message: str
) -> None:
    await api.set(**{quota: limit})
    await api.batch()
    uploaded = (await api.upload()).json()["id"]
    refused = _refusal(await api.create(uploaded), quota)
    assert refused == f"Project {api.project}'s quota {quota} {message}"
    # nothing of the refused batch is counted
    usage = await api.usage()
    assert (usage["queued_requests"], usage["enqueued_tokens"]) == (3, THREE_TOKENS)
    assert usage["batches_in_progress"] == 1
    if quota == "creates_per_minute":  # a new minute, a new window
        api.clock[0] = MINUTE + timedelta(minutes=1)
        assert (await api.create(uploaded)).status_code == 200


async def test_stored_bytes_refuses_an_upload_and_keeps_nothing(api: Api, tmp_path: Path) -> None:
    await api.set(stored_bytes=len(THREE) + 10)
    assert (await api.upload()).status_code == 200
    refused = _refusal(await api.upload(), "stored_bytes")
    assert refused == (
        f"Project {api.project}'s quota stored_bytes is {len(THREE) + 10}; {len(THREE)} bytes "
        f"are in use and this file adds {len(THREE)}."
    )
    listed = (await api.call("GET", "/v1/files")).json()["data"]
    assert len(listed) == 1
    assert _blobs(tmp_path) == 1  # no blob left behind
    assert (await api.usage())["stored_bytes"] == len(THREE)
    # deleting the file gives its bytes back
    assert (await api.call("DELETE", f"/v1/files/{listed[0]['id']}")).status_code == 200
    assert (await api.usage())["stored_bytes"] == 0
    assert (await api.upload()).status_code == 200


async def _claim_and_complete(pool: Pool, n: int) -> None:
    """What a worker does: claim ``n`` requests and record them completed."""
    async with pool.connection() as conn:
        claimed = await queue.claim(conn, pool="spot", owner="w", n=n)
    async with pool.connection() as conn:
        await queue.record_outcomes(
            conn,
            "w",
            [
                Outcome(c.id, c.attempt, "completed", response_status=200, response_body={})
                for c in claimed
            ],
        )


async def _finish(pool: Pool, blobs: LocalBlobStore, now: datetime) -> int:
    return await finish_ready(pool, blobs, retention=timedelta(days=1), now=lambda: now)


async def test_the_use_goes_down_as_requests_settle_and_the_batch_completes(
    api: Api, pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    batch_id = await api.batch(chat_file(4))
    before = await api.usage()
    assert (before["queued_requests"], before["enqueued_tokens"]) == (4, 28)
    assert await ingest_next(pool, blobs, max_requests=100, now=lambda: MINUTE) == batch_id
    await _claim_and_complete(pool, 2)
    await fold_counters(pool)
    half = await api.usage()
    assert (half["queued_requests"], half["enqueued_tokens"]) == (2, 14)
    await _claim_and_complete(pool, 2)
    await fold_counters(pool)
    assert await _finish(pool, blobs, MINUTE) == 1
    done = await api.usage()
    assert (done["queued_requests"], done["enqueued_tokens"], done["batches_in_progress"]) == (
        0,
        0,
        0,
    )
    output = (await api.call("GET", f"/v1/batches/{batch_id}")).json()["output_file_id"]
    output_bytes = (await api.call("GET", f"/v1/files/{output}")).json()["bytes"]
    assert done["stored_bytes"] == len(chat_file(4)) + output_bytes


async def test_a_cancelled_batch_gives_back_what_it_held(
    api: Api, pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    batch_id = await api.batch()
    assert await ingest_next(pool, blobs, max_requests=100, now=lambda: MINUTE) == batch_id
    assert (await api.call("POST", f"/v1/batches/{batch_id}/cancel")).status_code == 200
    assert (await api.usage())["batches_in_progress"] == 1  # cancelling: still live
    async with pool.connection() as conn:
        await queue.cancel_queued(conn)
    await fold_counters(pool)
    assert await _finish(pool, blobs, MINUTE) == 1
    usage = await api.usage()
    assert (usage["queued_requests"], usage["enqueued_tokens"], usage["batches_in_progress"]) == (
        0,
        0,
        0,
    )


async def test_an_expired_batch_gives_back_what_it_held(
    api: Api, pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    batch_id = await api.batch()
    assert await ingest_next(pool, blobs, max_requests=100, now=lambda: MINUTE) == batch_id
    await _claim_and_complete(pool, 1)
    assert await _finish(pool, blobs, MINUTE + timedelta(days=2)) == 1
    assert (await api.call("GET", f"/v1/batches/{batch_id}")).json()["status"] == "expired"
    await fold_counters(pool)  # deltas folded after the end move nothing
    usage = await api.usage()
    assert (usage["queued_requests"], usage["enqueued_tokens"], usage["batches_in_progress"]) == (
        0,
        0,
        0,
    )


async def test_a_limit_below_the_use_blocks_only_new_work(
    api: Api, pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    batch_id = await api.batch()
    lowered = await api.set(queued_requests=1, enqueued_tokens=0, batches_in_progress=0)
    assert lowered["usage"]["queued_requests"] == 3  # accepted below the use
    uploaded = (await api.upload()).json()["id"]
    _refusal(await api.create(uploaded), "batches_in_progress")
    # the accepted batch runs to its end
    assert await ingest_next(pool, blobs, max_requests=100, now=lambda: MINUTE) == batch_id
    await _claim_and_complete(pool, 3)
    await fold_counters(pool)
    assert await _finish(pool, blobs, MINUTE) == 1
    assert (await api.call("GET", f"/v1/batches/{batch_id}")).json()["status"] == "completed"
    await api.set(queued_requests=3, enqueued_tokens=None, batches_in_progress=None)
    assert (await api.create(uploaded)).status_code == 200


async def test_racing_creates_do_not_both_pass_a_limit(
    api: Api, pool: Pool, tmp_path: Path
) -> None:
    await api.set(queued_requests=4)
    files = [(await api.upload()).json()["id"] for _ in range(2)]
    member = await make_user(pool, "mia", project_id=api.project)

    async def create(file_id: str) -> str:
        new = batch_service.new_batch(
            Settings(),
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        async with pool.connection() as conn:
            return (await batch_service.create(conn, member, new, MINUTE)).id

    outcomes = await asyncio.gather(*(create(f) for f in files), return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == ["QuotaExceeded", "str"]
    assert (await api.usage())["queued_requests"] == 3


async def test_a_message_batch_is_refused_in_anthropics_shape(api: Api) -> None:
    await api.set(queued_requests=1)
    params = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    body = {"requests": [{"custom_id": f"r{i}", "params": params} for i in range(2)]}
    answer = await api.client.post(
        "/v1/messages/batches",
        content=orjson.dumps(body),
        headers={"x-api-key": "k-member", "content-type": "application/json"},
    )
    assert answer.status_code == 429, answer.text
    assert answer.json() == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": f"Project {api.project}'s quota queued_requests is 1; 0 requests are in "
            "use and this batch adds 2.",
        },
    }
    await api.set(queued_requests=None)
    created = await api.client.post(
        "/v1/messages/batches",
        content=orjson.dumps(body),
        headers={"x-api-key": "k-member", "content-type": "application/json"},
    )
    assert created.status_code == 200, created.text
    usage = await api.usage()
    # "user" and "hi" are 2 tokens and each may write 8
    assert (usage["queued_requests"], usage["enqueued_tokens"]) == (2, 20)


async def test_admit_batch_counts_creates_in_the_minute_of_now(pool: Pool) -> None:
    project = await make_project(pool)
    async with pool.connection() as conn:
        admin = await make_user(pool, "root", admin=True, project_id=project)
        await quotas.set_limits(conn, admin, project, {"creates_per_minute": 2}, MINUTE)
        for _ in range(2):
            await quotas.admit_batch(conn, project, requests=1, tokens=1, now=MINUTE)
        with pytest.raises(QuotaExceeded):
            await quotas.admit_batch(conn, project, requests=1, tokens=1, now=MINUTE)
        later = MINUTE + timedelta(seconds=60)
        await quotas.admit_batch(conn, project, requests=1, tokens=1, now=later)
        assert (await quotas.get(conn, admin, project, later)).usage["creates_per_minute"] == 1


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERBATCH_DATABASE_URL": db_url}
    return subprocess.run(
        [sys.executable, "-m", "inferbatch", "projects", "quota", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


async def test_the_cli_sets_and_clears_quotas_and_prints_limits_and_use(
    api: Api, db_url: str
) -> None:
    await api.batch()
    done = await asyncio.to_thread(
        _cli, db_url, "quoted", "--queued-requests", "1", "--stored-bytes", "99"
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("\t", 1) for line in done.stdout.splitlines())
    assert lines["queued_requests"] == "1\t3"  # below the use: accepted
    assert lines["stored_bytes"] == f"99\t{len(THREE)}"
    assert lines["enqueued_tokens"] == f"unlimited\t{THREE_TOKENS}"
    cleared = await asyncio.to_thread(_cli, db_url, api.project, "--clear", "stored_bytes")
    assert "stored_bytes\tunlimited" in cleared.stdout
    read = await api.call("GET", f"/v1/organization/projects/{api.project}/quotas")
    assert read.json()["limits"]["queued_requests"] == 1
    assert read.json()["limits"]["stored_bytes"] is None
    unknown = await asyncio.to_thread(_cli, db_url, "proj_nope")
    assert unknown.returncode == 1 and "proj_nope" in unknown.stderr


async def test_the_dashboard_shows_the_projects_limits_and_use(api: Api) -> None:
    await api.batch()
    await api.set(queued_requests=3)
    form = await api.client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    await api.client.post(
        "/login", data={"api_key": "k-member", "csrf_token": token.group(1), "next": "/"}
    )
    page = (await api.client.get("/")).text

    def row(name: str) -> list[str]:
        found = re.search(rf'data-testid="quota-{name}"[^>]*>(.*?)</tr>', page, re.S)
        assert found is not None
        return [c.strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", found.group(1), re.S)]

    assert row("queued_requests") == ["Queued requests", "3", "3"]
    assert row("stored_bytes")[1:] == [str(len(THREE)), "unlimited"]
    assert 'data-testid="quota-queued_requests" class="table-warning"' in page  # full
