"""Row-level security (migration 0022) on real PostgreSQL: deliberately unfiltered queries
under the API's role see only the project set for the transaction, nothing with none set,
everything for an admin; writes into another project are refused; and the API's pool
scopes what a route runs without being told."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from inferbatch.api.app import create_app
from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import audit as audit_rows
from inferbatch.db import webhooks as webhook_rows
from inferbatch.db.scope import ScopedPool, act_as, enter, request_scope
from inferbatch.db.types import Pool
from inferbatch.domain import Principal
from inferbatch.engines.registry import EngineRegistry
from inferbatch.ids import new_id
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import projects
from tests.helpers import chat_file
from tests.integration.fixtures import make_batch, make_project, make_user, utcnow

pytestmark = pytest.mark.integration

TENANT_TABLES = (
    "batches",
    "files",
    "requests",
    "request_inputs",
    "webhook_endpoints",
    "api_keys",
    "audit_logs",
    "project_members",
)
"""Tables each project below has rows in, read with no filter at all."""


@dataclass
class Tenants:
    pool: Pool
    a: Principal
    b: Principal
    admin: Principal
    key_a: str
    key_b: str


async def _rows_of(pool: Pool, blobs: LocalBlobStore, user: Principal) -> str:
    """A batch with ingested requests, a webhook endpoint, an audit row and a key in the
    user's project; returns the key."""
    await make_batch(pool, blobs, user, chat_file(3))
    async with pool.connection() as conn:
        await webhook_rows.insert_endpoint(
            conn,
            endpoint_id=new_id("we_"),
            owner_id=user.id,
            name="hook",
            url="https://example.com/hook",
            event_types=["batch.completed"],
            secret="whsec_x",
            now=utcnow(),
            project_id=user.project_id,
        )
        await audit_rows.append(
            conn,
            audit_rows.Event("batch.created", "api_key", "succeeded", project_id=user.project_id),
        )
        _, key = await projects.create_user_key(conn, user.project_id, user.id, role="owner")
    return key


@pytest.fixture
async def tenants(pool: Pool, tmp_path: Path) -> Tenants:
    blobs = LocalBlobStore(tmp_path)
    project_a = await make_project(pool, "a")
    project_b = await make_project(pool, "b")
    a = await make_user(pool, "alice", project_id=project_a)
    b = await make_user(pool, "bob", project_id=project_b)
    admin = await make_user(pool, "root", admin=True)
    key_a = await _rows_of(pool, blobs, a)
    key_b = await _rows_of(pool, blobs, b)
    assert await ingest_next(pool, blobs, max_requests=100, now=utcnow)
    assert await ingest_next(pool, blobs, max_requests=100, now=utcnow)
    return Tenants(pool, a, b, admin, key_a, key_b)


async def _count(pool: Pool, who: Principal | None, table: str) -> int:
    """The rows of ``table`` a query with no filter finds under the API's role."""
    async with pool.connection() as conn:
        await enter(conn, who)
        row = await (await conn.execute(f"SELECT count(*) AS n FROM {table}")).fetchone()
        await conn.rollback()
    assert row is not None
    return int(row["n"])


async def _owner_count(pool: Pool, table: str) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute(f"SELECT count(*) AS n FROM {table}")).fetchone()
    assert row is not None
    return int(row["n"])


async def test_an_unfiltered_query_under_the_api_role_sees_only_its_project(
    tenants: Tenants,
) -> None:
    for table in TENANT_TABLES:
        everything = await _owner_count(tenants.pool, table)
        mine = await _count(tenants.pool, tenants.a, table)
        theirs = await _count(tenants.pool, tenants.b, table)
        assert mine > 0 and theirs > 0, table
        assert mine + theirs <= everything, table
    async with tenants.pool.connection() as conn:
        await enter(conn, tenants.a)
        projects_seen = {
            r["project_id"]
            for table in ("batches", "files", "webhook_endpoints", "api_keys", "audit_logs")
            for r in await (await conn.execute(f"SELECT project_id FROM {table}")).fetchall()
        }
        batches_of_requests = {
            r["project_id"]
            for r in await (
                await conn.execute(
                    "SELECT b.project_id FROM requests r JOIN batches b ON b.id = r.batch_id"
                )
            ).fetchall()
        }
    assert projects_seen == {tenants.a.project_id}
    assert batches_of_requests == {tenants.a.project_id}


async def test_with_no_project_set_the_api_role_sees_no_tenant_row(tenants: Tenants) -> None:
    for table in (*TENANT_TABLES, "request_results", "uploads", "service_accounts"):
        assert await _count(tenants.pool, None, table) == 0, table


async def test_an_admin_under_the_api_role_sees_every_project(tenants: Tenants) -> None:
    for table in TENANT_TABLES:
        assert await _count(tenants.pool, tenants.admin, table) == await _owner_count(
            tenants.pool, table
        ), table


async def test_writing_a_row_into_another_project_is_refused_by_the_policy(
    tenants: Tenants,
) -> None:
    async with tenants.pool.connection() as conn:
        await enter(conn, tenants.a)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            await webhook_rows.insert_endpoint(
                conn,
                endpoint_id=new_id("we_"),
                owner_id=tenants.a.id,
                name="sneaky",
                url="https://example.com/x",
                event_types=["batch.completed"],
                secret="whsec_y",
                now=utcnow(),
                project_id=tenants.b.project_id,
            )
        await conn.rollback()
        await enter(conn, tenants.a)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            await conn.execute("UPDATE batches SET project_id = %s", (tenants.b.project_id,))
        await conn.rollback()


async def test_the_settings_last_only_for_their_transaction(tenants: Tenants) -> None:
    async with tenants.pool.connection() as conn:
        await enter(conn, tenants.a)
        await conn.commit()
        row = await (
            await conn.execute(
                "SELECT current_user AS who, current_setting('inferbatch.project_id', true) AS p"
            )
        ).fetchone()
    assert row is not None and row["who"] != "inferbatch_api" and not row["p"]


@pytest.fixture
async def client(tenants: Tenants, db_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(
        Settings(blob_dir=tmp_path),
        db_url,
        LocalBlobStore(tmp_path),
        EngineRegistry.from_specs({}, timeout=1),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c


async def test_the_api_pool_scopes_a_requests_transactions_to_its_principal(
    tenants: Tenants, client: httpx.AsyncClient
) -> None:
    """What the API's pool hands out acts as the API's role: seeing nothing before a
    principal is bound, then only its project; the routes answer as before."""
    db: ScopedPool = client._transport.app.state.inferbatch.db  # type: ignore[attr-defined]
    unfiltered = "SELECT current_user AS who, array_agg(DISTINCT project_id) AS p FROM batches"
    with request_scope():
        async with db.connection() as conn:
            before = await (await conn.execute(unfiltered)).fetchone()
        act_as(tenants.b)
        async with db.connection() as conn:
            bound = await (await conn.execute(unfiltered)).fetchone()
    assert before == {"who": "inferbatch_api", "p": None}
    assert bound == {"who": "inferbatch_api", "p": [tenants.b.project_id]}
    for key in (tenants.key_a, tenants.key_b):
        auth = {"authorization": f"Bearer {key}"}
        batches = await client.get("/v1/batches", headers=auth)
        files = await client.get("/v1/files", headers=auth)
        assert batches.status_code == 200 and len(batches.json()["data"]) == 1, batches.text
        assert files.status_code == 200 and len(files.json()["data"]) == 1, files.text
