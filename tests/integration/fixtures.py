"""Helpers that put users, files and batches into a test database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from inferbatch.blobstore import LocalBlobStore, new_blob_key
from inferbatch.config import Settings
from inferbatch.db import counters, files, users
from inferbatch.db.types import Pool
from inferbatch.domain import BatchRecord, User
from inferbatch.ids import new_id
from inferbatch.services import batches as batch_service


def utcnow() -> datetime:
    return datetime.now(UTC)


async def make_user(pool: Pool, name: str = "alice", admin: bool = False) -> User:
    async with pool.connection() as conn:
        return await users.ensure_user(conn, name, is_admin=admin)


async def make_file(pool: Pool, blobs: LocalBlobStore, user: User, content: bytes) -> str:
    key = new_blob_key("upload")
    with blobs.open_writer(key) as w:
        w.write(content)
    async with pool.connection() as conn:
        record = await files.insert(
            conn,
            file_id=new_id("file-"),
            owner_id=user.id,
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
    user: User,
    content: bytes,
    *,
    endpoint: str = "/v1/chat/completions",
    window: str = "24h",
    metadata: dict[str, str] | None = None,
    created_at: datetime | None = None,
    settings: Settings | None = None,
) -> BatchRecord:
    file_id = await make_file(pool, blobs, user, content)
    body: dict[str, Any] = {
        "input_file_id": file_id,
        "endpoint": endpoint,
        "completion_window": window,
        "metadata": metadata,
    }
    async with pool.connection() as conn:
        return await batch_service.create(
            conn,
            user,
            body,
            settings or Settings(min_completion_window="1s"),
            created_at or utcnow(),
        )


async def fold_counters(pool: Pool) -> None:
    """What the leader's progress duty does each tick: fold pending request deltas into
    the batch counters and totals."""
    async with pool.connection() as conn:
        await counters.fold(conn, await counters.pending_batches(conn))
        await counters.fold_batch_totals(conn)
