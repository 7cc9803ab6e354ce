"""Helpers that put users, files and batches into a test database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from inferbatch.blobstore import LocalBlobStore, new_blob_key
from inferbatch.config import Settings
from inferbatch.db import counters, files, users
from inferbatch.db import projects as project_rows
from inferbatch.db.types import Pool
from inferbatch.domain import DEFAULT_PROJECT_ID, BatchRecord, Principal
from inferbatch.ids import new_id
from inferbatch.services import batches as batch_service


def utcnow() -> datetime:
    return datetime.now(UTC)


async def make_user(
    pool: Pool,
    name: str = "alice",
    admin: bool = False,
    project_id: str = DEFAULT_PROJECT_ID,
) -> Principal:
    """The user called ``name`` (made if new), acting as a member of ``project_id`` (made
    a member if not one), as a key of that project would."""
    async with pool.connection() as conn:
        user = await users.ensure_user(conn, name, is_admin=admin)
        await conn.execute(users.ADD_MEMBER, (project_id, user.id, "member"))
    return Principal.of_user(user, project_id, role="member")


async def make_project(pool: Pool, name: str = "other") -> str:
    """A new project's id."""
    async with pool.connection() as conn:
        project = await project_rows.insert_project(conn, new_id("proj_"), name, utcnow())
    return project.id


async def make_file(pool: Pool, blobs: LocalBlobStore, user: Principal, content: bytes) -> str:
    key = new_blob_key("upload")
    with blobs.open_writer(key) as w:
        w.write(content)
    async with pool.connection() as conn:
        record = await files.insert(
            conn,
            file_id=new_id("file-"),
            owner_id=user.id,
            project_id=user.project_id,
            purpose="batch",
            filename="in.jsonl",
            size=len(content),
            sha256=w.sha256,
            blob_key=key,
            expires_at=utcnow() + timedelta(days=1),
        )
    return record.id


async def make_batch(
    pool: Pool,
    blobs: LocalBlobStore,
    user: Principal,
    content: bytes,
    *,
    endpoint: str = "/v1/chat/completions",
    window: str = "24h",
    metadata: dict[str, str] | None = None,
    created_at: datetime | None = None,
    settings: Settings | None = None,
) -> BatchRecord:
    file_id = await make_file(pool, blobs, user, content)
    new = batch_service.new_batch(
        settings or Settings(min_completion_window="1s"),
        input_file_id=file_id,
        endpoint=endpoint,
        completion_window=window,
        metadata=metadata,
    )
    async with pool.connection() as conn:
        return await batch_service.create(conn, user, new, created_at or utcnow())


async def fold_counters(pool: Pool) -> None:
    """What the leader's progress duty does each tick: fold pending request deltas into
    the batch counters and totals."""
    async with pool.connection() as conn:
        await counters.fold(conn, await counters.pending_batches(conn))
        await counters.fold_batch_totals(conn)
        await counters.fold_usage(conn)


REQUESTS_JOINED = """(
    SELECT q.*, i.line, i.custom_id, i.url, i.model, i.body, i.input_hash,
        res.response_status, res.response_request_id, res.response_body,
        coalesce(res.error, q.last_error) AS error, res.prompt_tokens,
        res.completion_tokens, res.finished_at, res.worker_id
    FROM requests q JOIN request_inputs i ON i.id = q.id
    LEFT JOIN request_results res ON res.request_id = q.id
) AS requests"""
"""A request's three rows side by side, in one flat shape, for tests that read them."""

SETTLE_DIRECTLY = """
WITH s AS (
    UPDATE requests SET status = %(status)s, pool = coalesce(%(pool)s, pool),
        started_at = %(started)s, dedup_of = %(dedup_of)s
    WHERE id = ANY(%(ids)s::bigint[])
    RETURNING id, batch_id, status, pool, attempts, started_at, dedup_of
)
INSERT INTO request_results (request_id, batch_id, status, pool, attempt, started_at,
    finished_at, response_status, prompt_tokens, completion_tokens, dedup_of)
SELECT id, batch_id, status, pool, attempts, started_at, %(finished)s, %(response_status)s,
    %(prompt_tokens)s, %(completion_tokens)s, dedup_of
FROM s
"""
"""Settle requests by hand (no worker), writing their result rows: for tests that need
finished history of a given shape."""


async def finish_queued(pool: Pool, n: int, seconds: float) -> None:
    """The first ``n`` queued requests complete now, each having run ``seconds`` (a measured
    service time for the escalate and ETA duties)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id FROM requests WHERE status = 'queued' ORDER BY id LIMIT %s", (n,)
        )
        ids = [r["id"] for r in await cur.fetchall()]
        now = datetime.now(UTC)
        await conn.execute(
            SETTLE_DIRECTLY,
            {
                "ids": ids,
                "status": "completed",
                "pool": None,
                "started": now - timedelta(seconds=seconds),
                "finished": now,
                "dedup_of": None,
                "response_status": 200,
                "prompt_tokens": None,
                "completion_tokens": None,
            },
        )
