"""Uploads (OpenAI's Uploads API) on real PostgreSQL, the local blob store and a real
S3-protocol server (moto's, its own process): parts compose in the order given, small and
large; every refusal leaves the upload pending and nothing behind; cancel, expiry and a
storage outage mid-complete lose nothing and leave no part blob."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config

from inferbatch.blobstore import BlobStore, LocalBlobStore
from inferbatch.blobstore.s3 import S3BlobStore
from inferbatch.config import Settings
from inferbatch.db import uploads as upload_rows
from inferbatch.db.connector import MIGRATIONS_DIR
from inferbatch.db.types import Pool
from inferbatch.domain import Principal, UploadPartRecord, UploadRecord
from inferbatch.errors import Conflict, InvalidRequest, NotFound, StorageUnavailable, TooLarge
from inferbatch.protocol.uploads import UploadCompleteRequest, UploadCreateRequest
from inferbatch.services import upload_sessions as uploads
from tests.conftest import with_dbname
from tests.integration.fixtures import make_project, make_user, utcnow
from tests.s3server import S3Bucket, S3Server, TcpProxy, s3_server

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
BOUNDARY = "ib-test-boundary"
SETTINGS = Settings()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server) -> S3Bucket:
    return s3.create_bucket()


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    s3: S3Server = request.getfixturevalue("s3")
    return s3.store(request.getfixturevalue("bucket"), part_size=5 * MiB)


def stored_keys(blobs: BlobStore) -> list[str]:
    """Every blob in the store (keys without the bucket prefix)."""
    if isinstance(blobs, LocalBlobStore):
        root = blobs.root
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert isinstance(blobs, S3BlobStore)
    listed = blobs.client.list_objects_v2(Bucket=blobs.bucket)
    prefix = f"{blobs.prefix}/" if blobs.prefix else ""
    return sorted(o["Key"].removeprefix(prefix) for o in listed.get("Contents", []))


def form(data: bytes, field: str = "data", chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    """A multipart/form-data body holding ``data`` in ``field``, in chunks."""

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
            'filename="blob"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        for i in range(0, len(data), chunk):
            yield data[i : i + chunk]
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    return body()


async def new_upload(
    pool: Pool, user: Principal, size: int, settings: Settings = SETTINGS, **fields: Any
) -> UploadRecord:
    """A new upload of ``size`` bytes (a batch file unless ``fields`` say otherwise)."""
    body = UploadCreateRequest.model_validate(
        {"bytes": size, "filename": "big.jsonl", "mime_type": "application/jsonl"}
        | {"purpose": "batch"}
        | fields
    )
    async with pool.connection() as conn:
        return await uploads.create(conn, user, body, settings, utcnow())


async def add(
    pool: Pool,
    blobs: BlobStore,
    user: Principal,
    upload_id: str,
    data: bytes,
    settings: Settings = SETTINGS,
    field: str = "data",
) -> UploadPartRecord:
    return await uploads.add_part(
        pool,
        blobs,
        settings,
        user,
        upload_id,
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        content_length=None,
        body=form(data, field),
        now=utcnow(),
    )


async def complete(
    pool: Pool,
    blobs: BlobStore,
    user: Principal,
    upload_id: str,
    ids: list[str],
    md5: str | None = None,
) -> tuple[Any, Any]:
    return await uploads.complete(
        pool, blobs, user, upload_id, UploadCompleteRequest(part_ids=ids, md5=md5), utcnow()
    )


async def upload_row(pool: Pool, upload_id: str) -> UploadRecord:
    async with pool.connection() as conn:
        upload = await upload_rows.get(conn, upload_id, None)
    assert upload is not None
    return upload


async def count(pool: Pool, sql: str, *params: object) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute(sql, params)).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


def read(blobs: BlobStore, key: str) -> bytes:
    with blobs.open_reader(key) as r:
        return r.read()


# -- composing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes",
    [
        [6 * MiB, 100, 5 * MiB + 3, 1024, 2 * MiB, 7 * MiB, 10],  # large and small mixed
        [100, 200, 300],  # all small: one PutObject
        [5 * MiB, 5 * MiB],  # exactly S3's smallest part
        [0, 3 * MiB, 0],  # empty parts
        [],
    ],
    ids=["mixed", "small", "min-part", "empty-parts", "none"],
)
def test_compose_writes_the_sources_in_the_order_given_with_their_digests(
    blobs: BlobStore, sizes: list[int]
) -> None:
    rng = random.Random(len(sizes))
    parts = [rng.randbytes(n) for n in sizes]
    keys = [f"part/{i}" for i in range(len(parts))]
    for key, data in zip(keys, parts, strict=True):
        with blobs.open_writer(key) as w:
            w.write(data)
    order = list(range(len(parts)))
    rng.shuffle(order)
    whole = b"".join(parts[i] for i in order)
    composed = blobs.compose("upload/whole", [keys[i] for i in order], md5=True)
    assert composed.size == len(whole)
    assert composed.sha256 == hashlib.sha256(whole).hexdigest()
    assert composed.md5 == hashlib.md5(whole).hexdigest()
    assert read(blobs, "upload/whole") == whole
    for key, data in zip(keys, parts, strict=True):  # the sources are left as they are
        assert read(blobs, key) == data
    assert blobs.compose("upload/again", [keys[i] for i in order]).md5 is None


def test_s3_compose_copies_large_sources_server_side(s3: S3Server, bucket: S3Bucket) -> None:
    store = s3.store(bucket, part_size=5 * MiB)
    calls: list[str] = []
    for op in ("UploadPart", "UploadPartCopy"):
        store.client.meta.events.register(
            f"before-call.s3.{op}", lambda model, **_: calls.append(model.name)
        )
    # small, large (topped up by streaming its first bytes, then copied), large, small
    sizes = [MiB, 10 * MiB, 6 * MiB, 100]
    parts = [os.urandom(n) for n in sizes]
    for i, data in enumerate(parts):
        with store.open_writer(f"part/{i}") as w:
            w.write(data)
    calls.clear()
    composed = store.compose("upload/whole", [f"part/{i}" for i in range(4)])
    assert composed.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()
    assert read(store, "upload/whole") == b"".join(parts)
    assert calls == ["UploadPart", "UploadPartCopy", "UploadPartCopy", "UploadPart"]
    assert s3.open_uploads(bucket) == []


def test_compose_with_a_missing_source_leaves_nothing(blobs: BlobStore) -> None:
    with blobs.open_writer("part/a") as w:
        w.write(os.urandom(6 * MiB))
    with pytest.raises(FileNotFoundError):
        blobs.compose("upload/whole", ["part/a", "part/gone"])
    assert stored_keys(blobs) == ["part/a"]
    if isinstance(blobs, S3BlobStore):
        assert not blobs.client.list_multipart_uploads(Bucket=blobs.bucket).get("Uploads")


# -- the upload life ------------------------------------------------------------------------


async def test_parts_complete_in_the_order_given_into_one_file(
    pool: Pool, blobs: BlobStore
) -> None:
    user = await make_user(pool)
    chunks = [os.urandom(6 * MiB), os.urandom(1000), os.urandom(5 * MiB + 7), os.urandom(10)]
    upload = await new_upload(pool, user, sum(map(len, chunks)))
    assert (upload.status, upload.expires_at - upload.created_at) == ("pending", timedelta(hours=1))
    parts = [await add(pool, blobs, user, upload.id, c) for c in chunks]
    order = [2, 0, 3, 1]
    whole = b"".join(chunks[i] for i in order)
    done, file = await complete(
        pool, blobs, user, upload.id, [parts[i].id for i in order], hashlib.md5(whole).hexdigest()
    )
    assert done.status == "completed" and done.file_id == file.id
    assert (file.bytes, file.purpose, file.filename) == (len(whole), "batch", "big.jsonl")
    assert file.sha256 == hashlib.sha256(whole).hexdigest()
    assert read(blobs, file.blob_key) == whole
    # the part blobs and rows are gone; only the file's blob is left
    assert stored_keys(blobs) == [file.blob_key]
    assert await count(pool, "SELECT count(*) FROM upload_parts") == 0
    assert await count(pool, "SELECT count(*) FROM uploads WHERE cleared_at IS NOT NULL") == 1
    with pytest.raises(Conflict, match="already completed"):
        await complete(pool, blobs, user, upload.id, [parts[i].id for i in order])
    with pytest.raises(Conflict, match="already completed"):
        await add(pool, blobs, user, upload.id, b"more")
    with pytest.raises(Conflict, match="already completed"):
        await uploads.cancel(pool, blobs, user, upload.id, utcnow())
    assert await count(pool, "SELECT count(*) FROM files") == 1


async def test_a_wrong_md5_is_refused_and_the_upload_stays_pending(
    pool: Pool, blobs: BlobStore
) -> None:
    user = await make_user(pool)
    data = os.urandom(6 * MiB)
    upload = await new_upload(pool, user, len(data))
    part = await add(pool, blobs, user, upload.id, data)
    with pytest.raises(InvalidRequest) as exc:
        await complete(pool, blobs, user, upload.id, [part.id], "0" * 32)
    assert exc.value.param == "md5" and hashlib.md5(data).hexdigest() in exc.value.message
    with pytest.raises(InvalidRequest) as exc:
        await complete(pool, blobs, user, upload.id, [part.id], "not-hex")
    assert exc.value.param == "md5"
    assert (await upload_row(pool, upload.id)).status == "pending"
    assert await count(pool, "SELECT count(*) FROM files") == 0
    assert stored_keys(blobs) == [part.blob_key]  # the composed blob went
    done, file = await complete(
        pool, blobs, user, upload.id, [part.id], hashlib.md5(data).hexdigest().upper()
    )
    assert done.status == "completed" and read(blobs, file.blob_key) == data


async def test_parts_that_do_not_add_up_or_are_not_this_uploads_are_refused(
    pool: Pool, blobs: BlobStore
) -> None:
    user = await make_user(pool)
    upload = await new_upload(pool, user, 30)
    other = await new_upload(pool, user, 10)
    a = await add(pool, blobs, user, upload.id, b"a" * 10)
    b = await add(pool, blobs, user, upload.id, b"b" * 10)
    foreign = await add(pool, blobs, user, other.id, b"c" * 10)
    refusals = {
        "wrong total": [a.id, b.id],
        "another upload's part": [a.id, b.id, foreign.id],
        "unknown part": [a.id, b.id, "part_nope"],
        "listed twice": [a.id, b.id, a.id],
    }
    for what, ids in refusals.items():
        with pytest.raises(InvalidRequest) as exc:
            await complete(pool, blobs, user, upload.id, ids)
        assert exc.value.param == "part_ids", what
    with pytest.raises(InvalidRequest, match="parts hold 20 bytes"):
        await complete(pool, blobs, user, upload.id, [a.id, b.id])
    assert (await upload_row(pool, upload.id)).status == "pending"
    assert (await upload_row(pool, other.id)).status == "pending"
    assert await count(pool, "SELECT count(*) FROM files") == 0
    assert len(stored_keys(blobs)) == 3
    c = await add(pool, blobs, user, upload.id, b"d" * 10)
    _, file = await complete(pool, blobs, user, upload.id, [c.id, a.id, b.id])
    assert read(blobs, file.blob_key) == b"d" * 10 + b"a" * 10 + b"b" * 10
    assert stored_keys(blobs) == sorted([file.blob_key, foreign.blob_key])


async def test_parts_sent_in_parallel_compose_in_the_order_listed(
    pool: Pool, blobs: BlobStore
) -> None:
    user = await make_user(pool)
    chunks = [os.urandom(n) for n in (3 * MiB, 100, 6 * MiB, 2 * MiB, 1)]
    upload = await new_upload(pool, user, sum(map(len, chunks)))
    parts = await asyncio.gather(*(add(pool, blobs, user, upload.id, c) for c in chunks))
    _, file = await complete(pool, blobs, user, upload.id, [p.id for p in parts])
    assert read(blobs, file.blob_key) == b"".join(chunks)


async def test_a_complete_left_by_a_dead_process_is_taken_over_after_the_lease(
    pool: Pool, blobs: BlobStore
) -> None:
    user = await make_user(pool)
    upload = await new_upload(pool, user, 4)
    part = await add(pool, blobs, user, upload.id, b"abcd")
    async with pool.connection() as conn:  # a claim whose holder is gone
        claimed = await upload_rows.claim_completion(
            conn, upload.id, "dead", utcnow(), uploads.COMPLETE_LEASE
        )
    assert claimed is not None
    with pytest.raises(Conflict, match="being completed"):
        await complete(pool, blobs, user, upload.id, [part.id])
    with pytest.raises(Conflict, match="being completed"):
        await add(pool, blobs, user, upload.id, b"more")
    with pytest.raises(Conflict, match="being completed"):
        await uploads.cancel(pool, blobs, user, upload.id, utcnow())
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE uploads SET completing_at = completing_at - %s WHERE id = %s",
            (uploads.COMPLETE_LEASE, upload.id),
        )
    done, file = await complete(pool, blobs, user, upload.id, [part.id])
    assert done.status == "completed" and read(blobs, file.blob_key) == b"abcd"
    async with pool.connection() as conn:  # the dead claim can no longer finish it
        assert await upload_rows.mark_completed(conn, upload.id, "dead", "file-x", utcnow()) is None
    assert await count(pool, "SELECT count(*) FROM files") == 1


async def test_another_projects_upload_is_not_found(pool: Pool, blobs: BlobStore) -> None:
    alice = await make_user(pool, "alice")
    bob = await make_user(pool, "bob", project_id=await make_project(pool))
    upload = await new_upload(pool, alice, 3)
    with pytest.raises(NotFound):
        await add(pool, blobs, bob, upload.id, b"abc")
    # a fellow member of alice's project may add to her upload
    part = await add(pool, blobs, await make_user(pool, "carol"), upload.id, b"abc")
    with pytest.raises(NotFound):
        await complete(pool, blobs, bob, upload.id, [part.id])
    with pytest.raises(NotFound):
        await uploads.cancel(pool, blobs, bob, upload.id, utcnow())
    admin = await make_user(pool, "root", admin=True)
    _, file = await complete(pool, blobs, admin, upload.id, [part.id])
    assert file.owner_id == alice.id


async def test_cancel_deletes_the_parts_and_closes_the_upload(pool: Pool, blobs: BlobStore) -> None:
    user = await make_user(pool)
    upload = await new_upload(pool, user, 12)
    part = await add(pool, blobs, user, upload.id, b"x" * 12)
    cancelled = await uploads.cancel(pool, blobs, user, upload.id, utcnow())
    assert cancelled.status == "cancelled"
    assert stored_keys(blobs) == []
    assert await count(pool, "SELECT count(*) FROM upload_parts") == 0
    with pytest.raises(Conflict, match="cancelled"):
        await add(pool, blobs, user, upload.id, b"y")
    with pytest.raises(Conflict, match="cancelled"):
        await complete(pool, blobs, user, upload.id, [part.id])
    again = await uploads.cancel(pool, blobs, user, upload.id, utcnow())
    assert again.status == "cancelled"
    assert stored_keys(blobs) == [] and await count(pool, "SELECT count(*) FROM files") == 0


async def test_a_part_arriving_while_the_upload_is_cancelled_leaves_nothing(
    pool: Pool, blobs: BlobStore
) -> None:
    user = await make_user(pool)
    upload = await new_upload(pool, user, 100)
    halfway = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        async for chunk in form(os.urandom(2 * MiB), chunk=MiB):
            yield chunk
            if not halfway.is_set():
                halfway.set()
                await go_on.wait()

    sending = asyncio.create_task(
        uploads.add_part(
            pool,
            blobs,
            SETTINGS,
            user,
            upload.id,
            content_type=f"multipart/form-data; boundary={BOUNDARY}",
            content_length=None,
            body=slow_body(),
            now=utcnow(),
        )
    )
    await halfway.wait()
    await uploads.cancel(pool, blobs, user, upload.id, utcnow())
    go_on.set()
    with pytest.raises(Conflict, match="cancelled"):
        await sending
    assert stored_keys(blobs) == []
    assert await count(pool, "SELECT count(*) FROM upload_parts") == 0


async def test_size_limits_refuse_and_keep_nothing(pool: Pool, blobs: BlobStore) -> None:
    user = await make_user(pool)
    small = Settings(max_upload_bytes=1000)
    with pytest.raises(InvalidRequest) as exc:
        await new_upload(pool, user, 1001, small)
    assert exc.value.param == "bytes"
    upload = await new_upload(pool, user, 1000, small)
    await add(pool, blobs, user, upload.id, b"a" * 600, small)
    with pytest.raises(TooLarge, match="400 more bytes"):
        await add(pool, blobs, user, upload.id, b"b" * 500, small)
    with pytest.raises(InvalidRequest, match="named 'data'"):
        await add(pool, blobs, user, upload.id, b"c" * 10, small, field="file")
    assert len(stored_keys(blobs)) == 1
    assert await count(pool, "SELECT count(*) FROM upload_parts") == 1
    with pytest.raises(TooLarge, match="at most"):
        await uploads.add_part(
            pool,
            blobs,
            SETTINGS,
            user,
            upload.id,
            content_type=f"multipart/form-data; boundary={BOUNDARY}",
            content_length=str(uploads.MAX_PART_BYTES + 10 * MiB),
            body=form(b""),
            now=utcnow(),
        )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"purpose": "batch_output"}, "purpose"),
        ({"mime_type": "application/pdf"}, "mime_type"),
        ({"mime_type": "jsonl"}, "mime_type"),
        ({"filename": "  "}, "filename"),
        ({"bytes": -1}, "bytes"),
        ({"expires_after": {"anchor": "created_at", "seconds": 60}}, "expires_after.seconds"),
    ],
)
async def test_invalid_creates_are_refused(pool: Pool, fields: dict[str, Any], param: str) -> None:
    user = await make_user(pool)
    with pytest.raises(InvalidRequest) as exc:
        await new_upload(pool, user, 10, **fields)
    assert exc.value.param == param
    assert await count(pool, "SELECT count(*) FROM uploads") == 0


async def test_the_file_expires_as_expires_after_says(pool: Pool, blobs: BlobStore) -> None:
    user = await make_user(pool)
    upload = await new_upload(
        pool, user, 2, expires_after={"anchor": "created_at", "seconds": 7200}
    )
    part = await add(pool, blobs, user, upload.id, b"ok")
    _, file = await complete(pool, blobs, user, upload.id, [part.id])
    assert file.expires_at is not None
    assert timedelta(seconds=7190) < file.expires_at - file.created_at < timedelta(seconds=7210)


# -- expiry and outages ---------------------------------------------------------------------


async def test_the_sweep_expires_uploads_past_their_hour_and_deletes_their_parts(
    pool: Pool, blobs: BlobStore
) -> None:
    user = await make_user(pool)
    old = await new_upload(pool, user, 20)
    fresh = await new_upload(pool, user, 20)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE uploads SET created_at = created_at - interval '2 hours', "
            "expires_at = expires_at - interval '2 hours' WHERE id = %s",
            (old.id,),
        )
    old_part = await add_unchecked(pool, blobs, user, old.id, b"o" * 10)
    fresh_part = await add(pool, blobs, user, fresh.id, b"f" * 10)
    assert len(stored_keys(blobs)) == 2
    with pytest.raises(Conflict, match="expired"):
        await complete(pool, blobs, user, old.id, [old_part.id])
    assert await uploads.sweep(pool, blobs, utcnow()) is False
    assert (await upload_row(pool, old.id)).status == "expired"
    assert (await upload_row(pool, fresh.id)).status == "pending"
    assert stored_keys(blobs) == [fresh_part.blob_key]
    assert await count(pool, "SELECT count(*) FROM upload_parts") == 1
    with pytest.raises(Conflict, match="expired"):
        await add(pool, blobs, user, old.id, b"late")
    # an hour on, the fresh one goes the same way
    await uploads.sweep(pool, blobs, utcnow() + timedelta(hours=1, seconds=1))
    assert (await upload_row(pool, fresh.id)).status == "expired"
    assert stored_keys(blobs) == []
    assert await count(pool, "SELECT count(*) FROM upload_parts") == 0


async def add_unchecked(
    pool: Pool, blobs: BlobStore, user: Principal, upload_id: str, data: bytes
) -> UploadPartRecord:
    """A part as it would have been added before the upload's expiry."""
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE uploads SET expires_at = expires_at + interval '1 day' WHERE id = %s",
            (upload_id,),
        )
    part = await add(pool, blobs, user, upload_id, data)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE uploads SET expires_at = expires_at - interval '1 day' WHERE id = %s",
            (upload_id,),
        )
    return part


async def test_the_sweep_reads_only_live_uploads(pool: Pool) -> None:
    """Many finished uploads, a few live ones: the sweep's reads use the partial indexes
    (its cost follows the live uploads, not the history)."""
    user = await make_user(pool)
    async with pool.connection() as conn:
        await conn.execute(
            """
            INSERT INTO uploads (id, owner_id, filename, purpose, bytes, mime_type,
                file_expires_seconds, status, created_at, expires_at, finished_at, cleared_at)
            SELECT 'upload_old' || g, %s, 'f', 'batch', 1, 'application/jsonl', 3600,
                CASE WHEN g %% 2 = 0 THEN 'completed' ELSE 'expired' END,
                now() - interval '30 days', now() - interval '30 days' + interval '1 hour',
                now() - interval '29 days', now() - interval '29 days'
            FROM generate_series(1, 20000) g
            """,
            (user.id,),
        )
        await conn.execute("ANALYZE uploads")
        params = {"now": utcnow(), "lease": uploads.COMPLETE_LEASE, "limit": 100}
        for sql, args in ((upload_rows.EXPIRE_DUE, params), (upload_rows.UNCLEARED, (100,))):
            cur = await conn.execute("EXPLAIN " + sql, args)
            plan = "\n".join(str(r["QUERY PLAN"]) for r in await cur.fetchall())
            assert "Seq Scan on uploads" not in plan, plan
            assert "uploads_pending_expiry" in plan or "uploads_uncleared" in plan, plan


async def test_a_storage_outage_during_complete_leaves_the_upload_pending_and_retryable(
    pool: Pool, s3: S3Server, bucket: S3Bucket
) -> None:
    with TcpProxy(int(s3.endpoint_url.rsplit(":", 1)[1])) as proxy:
        blobs = s3.store(bucket, endpoint_url=proxy.url, part_size=5 * MiB)
        user = await make_user(pool)
        chunks = [os.urandom(6 * MiB), os.urandom(100), os.urandom(7 * MiB)]
        upload = await new_upload(pool, user, sum(map(len, chunks)))
        parts = [await add(pool, blobs, user, upload.id, c) for c in chunks]
        part_keys = sorted(p.blob_key for p in parts)

        # the store goes away after the first part is copied: mid-compose
        def cut(**_: object) -> None:
            proxy.cut()

        blobs.client.meta.events.register("after-call.s3.UploadPartCopy", cut)
        with pytest.raises(StorageUnavailable):
            await complete(pool, blobs, user, upload.id, [p.id for p in parts])
        blobs.client.meta.events.unregister("after-call.s3.UploadPartCopy", cut)
        still = await upload_row(pool, upload.id)
        assert (still.status, still.completing_at, still.file_id) == ("pending", None, None)
        assert await count(pool, "SELECT count(*) FROM files") == 0

        # while it is down: refused again, nothing changes
        with pytest.raises(StorageUnavailable):
            await complete(pool, blobs, user, upload.id, [p.id for p in parts])
        assert (await upload_row(pool, upload.id)).status == "pending"

        proxy.restore()
        # no half file, every part kept (the multipart upload the outage kept from being
        # aborted is invisible: no key; a bucket lifecycle rule removes it)
        assert stored_keys(blobs) == part_keys
        whole = b"".join(chunks)
        done, file = await complete(
            pool, blobs, user, upload.id, [p.id for p in parts], hashlib.md5(whole).hexdigest()
        )
        assert done.status == "completed" and read(blobs, file.blob_key) == whole
        assert stored_keys(blobs) == [file.blob_key]


async def test_part_blobs_left_by_an_outage_after_completion_go_with_the_sweep(
    pool: Pool, s3: S3Server, bucket: S3Bucket
) -> None:
    with TcpProxy(int(s3.endpoint_url.rsplit(":", 1)[1])) as proxy:
        blobs = s3.store(bucket, endpoint_url=proxy.url, part_size=5 * MiB)
        user = await make_user(pool)
        upload = await new_upload(pool, user, 6)
        part = await add(pool, blobs, user, upload.id, b"abcdef")

        def cut(**_: object) -> None:  # down once the file is written, before the clean-up
            proxy.cut()

        blobs.client.meta.events.register("after-call.s3.PutObject", cut)
        done, file = await complete(pool, blobs, user, upload.id, [part.id])
        blobs.client.meta.events.unregister("after-call.s3.PutObject", cut)
        assert done.status == "completed"
        with pytest.raises(StorageUnavailable):
            await uploads.sweep(pool, blobs, utcnow())
        assert await count(pool, "SELECT count(*) FROM upload_parts") == 1
        proxy.restore()
        await uploads.sweep(pool, blobs, utcnow())
        assert stored_keys(blobs) == [file.blob_key]
        assert await count(pool, "SELECT count(*) FROM upload_parts") == 0
        assert await count(pool, "SELECT count(*) FROM uploads WHERE cleared_at IS NULL") == 0


def test_the_migration_creates_and_drops_the_upload_tables(server_url: str) -> None:
    name = f"ib_migrate_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_dbname(server_url, name)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        tables = "SELECT count(*) FROM pg_tables WHERE tablename IN ('uploads', 'upload_parts')"
        command.upgrade(cfg, "0010")
        with psycopg.connect(url) as conn:
            assert conn.execute(tables).fetchone() == (2,)
        command.downgrade(cfg, "0009")
        with psycopg.connect(url) as conn:
            assert conn.execute(tables).fetchone() == (0,)
        command.upgrade(cfg, "0010")
        with psycopg.connect(url) as conn:
            assert conn.execute(tables).fetchone() == (2,)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
