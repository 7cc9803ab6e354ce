"""Through a real PgBouncer in transaction pooling mode: the queue, ingest and finalize work
on pooled connections without server-side prepared statements, while leadership and
LISTEN use the direct session URL (and what goes wrong when they do not)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import batches, files
from inferbatch.db import requests as queue
from inferbatch.db.connector import migrate, open_pool
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.engines.registry import ANY_MODEL, EngineRegistry
from inferbatch.scheduler.finalize import finish_ready
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.scheduler.leadership import LOCK_KEY, WHO_LEADS, Leadership
from inferbatch.worker.worker import Worker, WorkerConfig
from tests.conftest import with_dbname
from tests.helpers import chat_file, parse_jsonl
from tests.integration.fixtures import fold_counters, make_batch, make_user, utcnow
from tests.integration.test_worker import CountingEngine
from tests.pgbouncer import PgBouncer, pgbouncer

pytestmark = pytest.mark.integration

ROUNDS = 30
"""Executions of the same statement per connection: well past psycopg's prepare threshold
(5), after which it would run the statement by name."""


@pytest.fixture(scope="module")
def bouncer(server_url: str) -> Iterator[PgBouncer]:
    with pgbouncer(server_url, pool_size=4) as b:
        yield b


@pytest.fixture(scope="module")
def narrow(server_url: str) -> Iterator[PgBouncer]:
    """One server connection per database for every client: any session state one client
    leaves on it is seen by the next."""
    with pgbouncer(server_url, pool_size=1) as b:
        yield b


@pytest.fixture
async def pooled(bouncer: PgBouncer, db_url: str) -> AsyncIterator[Pool]:
    async with open_pool(bouncer.pooled(db_url), max_size=8, prepare=False) as p:
        yield p


async def _backend_pid(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    assert row is not None
    return int(row[0])


async def test_the_fixture_pools_per_transaction(narrow: PgBouncer, db_url: str) -> None:
    """Two clients connected at once share one server connection: transaction pooling (in
    session mode the second would wait for the first to disconnect)."""
    url = narrow.pooled(db_url)
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as a,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as b,
    ):
        pid_a = await (await a.execute("SELECT pg_backend_pid()")).fetchone()
        pid_b = await (await b.execute("SELECT pg_backend_pid()")).fetchone()
    assert pid_a == pid_b
    assert pid_a is not None and pid_a[0] != await _backend_pid(db_url)


async def test_ingest_claims_results_and_finalize_work_through_pgbouncer(
    pooled: Pool, db_url: str, tmp_path: Path
) -> None:
    n = 300
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pooled)
    batch = await make_batch(pooled, blobs, user, chat_file(n))
    assert await ingest_next(pooled, blobs, max_requests=10_000, now=utcnow) == batch.id

    config = WorkerConfig(
        pool="spot",
        lease_seconds=30,
        max_attempts=3,
        retry_base_seconds=0.01,
        retry_max_seconds=0.1,
        drain_seconds=1,
        poll_seconds=0.05,
        flush_seconds=0.01,
        listen_url=db_url,  # LISTEN on the session URL, everything else pooled
    )
    engine = CountingEngine(max_in_flight=4)  # small claims: many executions of each statement
    worker = Worker(config, pooled, EngineRegistry({ANY_MODEL: engine}))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(60):
            while True:
                await fold_counters(pooled)
                async with pooled.connection() as conn:
                    record = await batches.get(conn, batch.id, None)
                assert record is not None
                if record.completed_count == n:
                    break
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert len(engine.calls) == n

    assert await finish_ready(pooled, blobs, retention=timedelta(days=1), now=utcnow) == 1
    async with pooled.connection() as conn:
        done = await batches.get(conn, batch.id, None)
        assert done is not None and done.status == "completed" and done.output_file_id
        output = await files.get(conn, done.output_file_id, None)
    assert output is not None
    lines = parse_jsonl(b"".join(blobs.iter_chunks(output.blob_key)).decode())
    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{i}" for i in range(n))
    assert done.error_file_id is None


async def test_the_same_statements_run_many_times_on_shared_server_connections(
    narrow: PgBouncer, db_url: str, tmp_path: Path
) -> None:
    """Four clients on one server connection each claim and record ROUNDS times: with
    prepared statements off nothing collides, and the server holds no prepared statement."""
    clients = 4
    async with open_pool(narrow.pooled(db_url), max_size=clients, prepare=False) as pool:
        blobs = LocalBlobStore(tmp_path)
        user = await make_user(pool)
        await make_batch(pool, blobs, user, chat_file(clients * ROUNDS))
        await ingest_next(pool, blobs, max_requests=10_000, now=utcnow)

        async def work(owner: str) -> int:
            settled = 0
            for _ in range(ROUNDS):
                async with pool.connection() as conn:
                    claimed = await queue.claim(conn, pool="spot", owner=owner, n=1)
                async with pool.connection() as conn:
                    settled += len(
                        await queue.record_outcomes(
                            conn,
                            owner,
                            [
                                Outcome(c.id, c.attempt, "completed", 200, {"ok": True})
                                for c in claimed
                            ],
                        )
                    )
            return settled

        done = await asyncio.gather(*(work(f"w{i}") for i in range(clients)))
        async with pool.connection() as conn:
            prepared = await (
                await conn.execute("SELECT count(*) AS n FROM pg_prepared_statements")
            ).fetchone()
            queued = await (
                await conn.execute("SELECT count(*) AS n FROM requests WHERE status = 'queued'")
            ).fetchone()
    assert sum(done) == clients * ROUNDS
    assert queued is not None and queued["n"] == 0
    assert prepared is not None and prepared["n"] == 0


async def test_psycopg_prepared_statements_collide_behind_transaction_pooling(
    narrow: PgBouncer, db_url: str
) -> None:
    """Why pools behind a transaction pooler open with prepare_threshold=None: with the
    default, each client prepares its sixth execution as "_pg3_0" on the one shared
    server connection, and the second client's prepare fails."""
    url = narrow.pooled(db_url)
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as a,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as b,
    ):
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            for i in range(ROUNDS):
                await a.execute("SELECT %s::int + 1", (i,))
                await b.execute("SELECT %s::int + 1", (i,))
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=None) as a,
        await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=None) as b,
    ):
        for i in range(ROUNDS):
            await a.execute("SELECT %s::int + 1", (i,))
            await b.execute("SELECT %s::int + 1", (i,))


async def test_leadership_on_the_session_url_while_the_pool_goes_through_pgbouncer(
    pooled: Pool, db_url: str
) -> None:
    a, b = Leadership(db_url), Leadership(db_url)
    try:
        assert await a.refresh() is True
        assert await b.refresh() is False
        async with pooled.connection() as conn:
            holders = await (await conn.execute(WHO_LEADS, (LOCK_KEY,))).fetchall()
            assert len(holders) == 1 and holders[0]["application_name"] == "inferbatch-leader"
            await conn.execute("SELECT pg_terminate_backend(%s)", (holders[0]["pid"],))
        # the leader's session ended: the lock went with it, and the other takes over
        assert await a.refresh() is False
        assert await b.refresh() is True
        assert await a.refresh() is False
    finally:
        await a.release()
        await b.release()


async def test_leadership_through_a_transaction_pooler_would_elect_two_leaders(
    narrow: PgBouncer, db_url: str
) -> None:
    """Why leadership needs the session URL: the advisory lock stays on the pooled server
    connection, which the next client is handed and re-enters the lock on."""
    url = narrow.pooled(db_url)
    a, b = Leadership(url), Leadership(url)
    try:
        assert await a.refresh() is True
        assert await b.refresh() is True
    finally:
        await a.release()
        await b.release()


async def test_a_notify_through_pgbouncer_reaches_a_listener_on_the_session_url(
    pooled: Pool, db_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {queue.QUEUE_CHANNEL}")
        async with pooled.connection() as conn:
            await queue.notify_queued(conn)  # delivered when this transaction commits
        async with asyncio.timeout(30):
            note = await anext(aiter(listener.notifies()))
    assert note.channel == queue.QUEUE_CHANNEL


def _schema(url: str) -> tuple[list[tuple[str, str, bool]], list[tuple[str]]]:
    """Every index of the public schema (table, index, valid) and the Alembic version."""
    with psycopg.connect(url) as conn:
        indexes = conn.execute(
            """
            SELECT t.relname, c.relname, i.indisvalid
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                JOIN pg_class t ON t.oid = i.indrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' ORDER BY 1, 2
            """
        ).fetchall()
        version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return indexes, version


def test_migrations_apply_through_pgbouncer(
    bouncer: PgBouncer, server_url: str, template_url: str
) -> None:
    """`inferbatch up` migrates on INFERBATCH_DATABASE_URL: that works through the pooler
    too (each migration is one transaction, each CREATE INDEX CONCURRENTLY one autocommit
    statement) and builds the same schema as a direct run; `inferbatch migrate` uses the
    session URL all the same."""
    name = f"ib_bouncer_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        migrate(bouncer.pooled(with_dbname(server_url, name)))
        indexes, version = _schema(with_dbname(server_url, name))
        assert (indexes, version) == _schema(template_url)
        assert indexes and all(valid for _, _, valid in indexes)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_transaction_pool_mode_requires_a_session_url() -> None:
    pooled = "postgresql://postgres@127.0.0.1:6432/app"
    with pytest.raises(ValueError, match="INFERBATCH_DATABASE_SESSION_URL"):
        Settings(database_url=pooled, database_pool_mode="transaction")
    settings = Settings(
        database_url=pooled,
        database_pool_mode="transaction",
        database_session_url="postgresql://postgres@127.0.0.1:5432/app",
    )
    assert settings.prepare_statements is False
    assert Settings(database_url=pooled).prepare_statements is True
    with pytest.raises(ValueError, match="needs INFERBATCH_DATABASE_URL"):
        Settings(database_session_url=pooled)
