"""Idempotency keys in the database: two creates racing under one key make one batch, a
rolled-back create frees its key, and expired keys are cleaned."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import idempotency as key_rows
from inferbatch.db.types import Pool
from inferbatch.errors import Conflict
from inferbatch.services import batches as batch_service
from inferbatch.services import idempotency
from tests.integration.fixtures import make_file, make_user, utcnow

pytestmark = pytest.mark.integration


async def test_racing_creates_under_one_key_make_one_batch(pool: Pool, tmp_path: Path) -> None:
    user = await make_user(pool)
    file_id = await make_file(pool, LocalBlobStore(tmp_path), user, b"{}\n")
    new = batch_service.new_batch(
        Settings(), input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
    )
    key = idempotency.parse("k1", "POST /v1/batches", "body")
    async with pool.connection() as first:
        made = await batch_service.create(first, user, new, utcnow(), key)

        async def second() -> str:
            async with pool.connection() as conn:
                return (await batch_service.create(conn, user, new, utcnow(), key)).id

        racing = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not racing.done()  # waits for the first transaction's claim
    assert await racing == made.id
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM batches")
        assert (await cur.fetchone())["n"] == 1  # type: ignore[index]
        with pytest.raises(Conflict):
            other = idempotency.parse("k1", "POST /v1/batches", "another body")
            await batch_service.create(conn, user, new, utcnow(), other)


async def test_a_rolled_back_create_frees_its_key_and_old_keys_are_cleaned(
    pool: Pool, tmp_path: Path
) -> None:
    user = await make_user(pool)
    file_id = await make_file(pool, LocalBlobStore(tmp_path), user, b"{}\n")
    new = batch_service.new_batch(
        Settings(), input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
    )
    key = idempotency.parse("k2", "POST /v1/batches", "body")
    async with pool.connection() as conn:
        await batch_service.create(conn, user, new, utcnow(), key)
        await conn.rollback()
        made = await batch_service.create(conn, user, new, utcnow(), key)
    async with pool.connection() as conn:
        assert await key_rows.forget_expired(conn, utcnow()) == 0
        later = utcnow() + idempotency.KEY_LIFETIME + timedelta(seconds=1)
        assert await key_rows.forget_expired(conn, later) == 1
        # the key is free again: a new batch
        assert (await batch_service.create(conn, user, new, utcnow(), key)).id != made.id
