"""Batch creation rules that need the database: the input file must exist, belong to the
caller and be a batch input."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import files
from inferbatch.db.types import Pool
from inferbatch.errors import InvalidRequest, NotFound
from inferbatch.services import batches as batch_service
from tests.integration.fixtures import make_file, make_project, make_user, utcnow

pytestmark = pytest.mark.integration

BODY = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}


def _new(file_id: str, **fields: Any) -> batch_service.NewBatch:
    return batch_service.new_batch(Settings(), input_file_id=file_id, **{**BODY, **fields})


async def test_an_output_file_cannot_be_a_batch_input(pool: Pool) -> None:
    user = await make_user(pool)
    async with pool.connection() as conn:
        out = await files.insert(
            conn,
            file_id="file-out",
            owner_id=user.id,
            purpose="batch_output",
            filename="o.jsonl",
            size=1,
            sha256="",
            blob_key="k",
            expires_at=None,
        )
        with pytest.raises(InvalidRequest) as exc:
            await batch_service.create(conn, user, _new(out.id), utcnow())
    assert exc.value.param == "input_file_id"


async def test_another_projects_file_is_not_found_but_an_admin_may_use_it(
    pool: Pool, tmp_path: Path
) -> None:
    other = await make_project(pool)
    alice, bob = await make_user(pool, "alice"), await make_user(pool, "bob", project_id=other)
    admin = await make_user(pool, "root", admin=True, project_id=other)
    file_id = await make_file(pool, LocalBlobStore(tmp_path), alice, b"{}\n")
    async with pool.connection() as conn:
        with pytest.raises(NotFound):
            await batch_service.create(conn, bob, _new(file_id), utcnow())
        batch = await batch_service.create(conn, admin, _new(file_id), utcnow())
    # the batch belongs to the file's project; its owner is who made it
    assert (batch.project_id, batch.owner_id) == (alice.project_id, admin.id)


async def test_deadline_follows_the_completion_window(pool: Pool, tmp_path: Path) -> None:
    user = await make_user(pool)
    file_id = await make_file(pool, LocalBlobStore(tmp_path), user, b"{}\n")
    now = utcnow()
    async with pool.connection() as conn:
        batch = await batch_service.create(
            conn,
            user,
            _new(file_id, completion_window="30m", metadata={"priority": "10", "dedup": "off"}),
            now,
        )
    assert batch.deadline_at == now + timedelta(minutes=30)
    assert (batch.priority, batch.dedup_scope, batch.status) == (10, "off", "validating")
