"""The S3 blob store against a real S3-protocol server (moto's server, its own process):
multipart writes, streamed reads, whole-or-absent blobs, clear start errors, and storage
outages that fail loudly instead of looking like missing files."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferbatch.blobstore import LocalBlobStore, open_blob_store, parse_blob_url
from inferbatch.blobstore.s3 import S3BlobStore
from inferbatch.config import Settings
from inferbatch.db import batches, files
from inferbatch.db.types import Pool
from inferbatch.engines.local import free_port
from inferbatch.errors import StorageUnavailable
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.scheduler.leadership import Leadership
from inferbatch.scheduler.service import Scheduler
from tests.helpers import chat_file
from tests.integration.fixtures import make_batch, make_file, make_user, utcnow
from tests.s3server import S3Bucket, S3Server, TcpProxy, s3_server, session

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part: several parts from a small blob


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server) -> S3Bucket:
    return s3.create_bucket()


@pytest.fixture
def store(s3: S3Server, bucket: S3Bucket) -> S3BlobStore:
    return s3.store(bucket, part_size=PART)


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[TcpProxy]:
    with TcpProxy(int(s3.endpoint_url.rsplit(":", 1)[1])) as p:
        yield p


def _chunks(data: bytes, seed: int = 1) -> Iterator[bytes]:
    """``data`` in uneven pieces, as an upload or a finalize would write it."""
    rng = random.Random(seed)
    i = 0
    while i < len(data):
        n = rng.randint(1, 3 * MiB)
        yield data[i : i + n]
        i += n


def test_a_blob_of_several_parts_round_trips_with_a_matching_sha256(
    s3: S3Server, bucket: S3Bucket, store: S3BlobStore
) -> None:
    data = os.urandom(4 * PART + 12345)
    with store.open_writer("upload/big") as w:
        for piece in _chunks(data):
            w.write(piece)
    assert w.size == len(data)
    assert w.sha256 == hashlib.sha256(data).hexdigest()
    head = s3.client().head_object(Bucket=bucket.name, Key=f"{bucket.prefix}/upload/big")
    assert head["ETag"].strip('"').endswith("-5")  # a multipart upload of five parts
    assert head["ContentLength"] == len(data)
    read = hashlib.sha256()
    for chunk in store.iter_chunks("upload/big", chunk_size=MiB):
        assert len(chunk) <= MiB
        read.update(chunk)
    assert read.hexdigest() == w.sha256
    assert s3.open_uploads(bucket) == []


def test_a_blob_smaller_than_a_part_is_one_put(
    s3: S3Server, bucket: S3Bucket, store: S3BlobStore
) -> None:
    with store.open_writer("upload/small") as w:
        w.write(b"hello\n")
        w.write(b"world\n")
    head = s3.client().head_object(Bucket=bucket.name, Key=f"{bucket.prefix}/upload/small")
    assert "-" not in head["ETag"]
    with store.open_reader("upload/small") as r:
        assert r.read() == b"hello\nworld\n"


def test_an_empty_blob_exists_and_reads_empty(store: S3BlobStore) -> None:
    with store.open_writer("output/empty") as w:
        pass
    assert w.size == 0 and store.exists("output/empty")
    with store.open_reader("output/empty") as r:
        assert r.read() == b"" and r.readline() == b""


@pytest.mark.parametrize("written_parts", [0, 2])
def test_an_exception_inside_the_writer_leaves_no_object_and_no_open_upload(
    s3: S3Server, bucket: S3Bucket, store: S3BlobStore, written_parts: int
) -> None:
    with pytest.raises(RuntimeError, match="client went away"), store.open_writer("upload/x") as w:
        w.write(os.urandom(written_parts * PART + 100))
        raise RuntimeError("client went away")
    assert not store.exists("upload/x")
    assert s3.keys(bucket) == []
    assert s3.open_uploads(bucket) == []


def test_readline_and_read_work_across_part_boundaries(store: S3BlobStore) -> None:
    rng = random.Random(3)
    lines = [(f"line {i} ".encode() + b"x" * rng.randint(0, 300_000)) + b"\n" for i in range(120)]
    data = b"".join(lines)
    assert len(data) > 3 * PART
    with store.open_writer("upload/lines") as w:
        for piece in _chunks(data, seed=5):
            w.write(piece)
    with store.open_reader("upload/lines") as r:
        got = []
        while line := r.readline():
            got.append(line)
    assert got == lines
    with store.open_reader("upload/lines") as r:
        assert list(r) == lines
    with store.open_reader("upload/lines") as r:
        head = r.read(PART - 7)
        middle = r.readline()
        rest = r.read()
    assert head + middle + rest == data
    assert middle.endswith(b"\n")


def test_a_missing_key_is_not_found_and_deleting_it_is_harmless(store: S3BlobStore) -> None:
    assert not store.exists("upload/none")
    with pytest.raises(FileNotFoundError):
        store.open_reader("upload/none")
    store.delete("upload/none")


def test_delete_removes_the_object(s3: S3Server, bucket: S3Bucket, store: S3BlobStore) -> None:
    with store.open_writer("upload/d") as w:
        w.write(b"x")
    assert store.exists("upload/d")
    store.delete("upload/d")
    assert not store.exists("upload/d")
    assert s3.keys(bucket) == []


def test_keys_live_under_the_prefix_and_may_not_escape_it(
    s3: S3Server, bucket: S3Bucket, store: S3BlobStore
) -> None:
    with store.open_writer("output/k") as w:
        w.write(b"x")
    assert s3.keys(bucket) == [f"{bucket.prefix}/output/k"]
    for bad in ("../escape", "/abs", ""):
        with pytest.raises(ValueError):
            store.open_writer(bad)


def test_a_read_that_loses_its_connection_resumes_where_it_stopped(
    s3: S3Server, bucket: S3Bucket, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(3 * PART)
    direct = s3.store(bucket, part_size=PART)
    with direct.open_writer("upload/r") as w:
        w.write(data)
    via_proxy = s3.store(bucket, endpoint_url=proxy.url, part_size=PART)
    caplog.set_level(logging.INFO, logger="inferbatch.blobstore.s3")
    with via_proxy.open_reader("upload/r") as r:
        first = r.read(2 * MiB)
        proxy.reset()  # every open connection is dropped mid-body
        rest = r.read()
    assert hashlib.sha256(first + rest).digest() == hashlib.sha256(data).digest()
    assert "resuming at byte" in caplog.text


def test_while_storage_is_down_every_call_says_so(
    s3: S3Server, bucket: S3Bucket, proxy: TcpProxy
) -> None:
    store = s3.store(bucket, endpoint_url=proxy.url, part_size=PART)
    with store.open_writer("upload/kept") as w:
        w.write(b"kept\n")
    proxy.cut()
    # unavailable, never "missing": a caller must not conclude that the file is gone
    with pytest.raises(StorageUnavailable, match="cannot reach"):
        store.exists("upload/kept")
    with pytest.raises(StorageUnavailable):
        store.open_reader("upload/kept")
    with pytest.raises(StorageUnavailable):
        store.delete("upload/kept")
    with pytest.raises(StorageUnavailable):
        store.check()
    with pytest.raises(StorageUnavailable), store.open_writer("upload/new") as w:
        w.write(b"never stored\n")
    with pytest.raises(StorageUnavailable), store.open_writer("upload/big") as w:
        w.write(os.urandom(PART + 1))  # the first part fails
    proxy.restore()
    store.check()
    assert store.exists("upload/kept") and not store.exists("upload/new")
    assert s3.keys(bucket) == [f"{bucket.prefix}/upload/kept"]
    assert s3.open_uploads(bucket) == []


# -- start-up checks ----------------------------------------------------------------------


def test_check_passes_on_a_reachable_bucket(store: S3BlobStore) -> None:
    store.check()


def test_a_missing_bucket_gives_a_clear_start_error(s3: S3Server) -> None:
    store = S3BlobStore("no-such-bucket", "p", endpoint_url=s3.endpoint_url, session=session())
    with pytest.raises(StorageUnavailable, match="bucket 'no-such-bucket' does not exist"):
        store.check()


def test_wrong_credentials_give_a_clear_start_error() -> None:
    with s3_server(auth=True) as strict:
        store = S3BlobStore("any", endpoint_url=strict.endpoint_url, session=session())
        with pytest.raises(StorageUnavailable, match="credentials were refused"):
            store.check()


def test_an_unreachable_endpoint_gives_a_clear_start_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    store = S3BlobStore("any", endpoint_url=url, session=session())
    with pytest.raises(StorageUnavailable, match=f"cannot reach s3://any at {url}"):
        store.check()


@pytest.mark.parametrize("role", ["api", "scheduler"])
def test_a_role_refuses_to_start_on_a_missing_bucket(
    s3: S3Server, role: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **s3.env,
        "INFERBATCH_BLOB_URL": "s3://no-such-bucket/blobs",
        # never reached: the storage check comes first
        "INFERBATCH_DATABASE_URL": "postgresql://127.0.0.1:1/none",
        "INFERBATCH_DATA_DIR": str(tmp_path),
        "INFERBATCH_ENGINE_URL": "http://127.0.0.1:1/v1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "inferbatch", role],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "file storage s3://no-such-bucket/blobs is not usable" in done.stderr
    assert "bucket 'no-such-bucket' does not exist" in done.stderr


# -- settings -----------------------------------------------------------------------------


def test_the_blob_url_picks_the_store(tmp_path: Path) -> None:
    assert isinstance(open_blob_store(Settings(data_dir=tmp_path)), LocalBlobStore)
    store = open_blob_store(Settings(blob_url="s3://my-bucket/inferbatch/files/"))
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == ("my-bucket", "inferbatch/files")
    assert parse_blob_url("s3://b.with.dots") == ("b.with.dots", "")


@pytest.mark.parametrize(
    "bad", ["http://bucket/p", "s3://", "s3:///prefix", "s3://UPPER_ok_but/../x", "bucket"]
)
def test_a_malformed_blob_url_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="blob URL"):
        Settings(blob_url=bad)


def test_blob_url_and_blob_dir_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        Settings(blob_url="s3://bucket", blob_dir=tmp_path)


# -- the scheduler: a storage error is "try again later", never "file not found" -------


async def test_ingest_leaves_the_batch_validating_while_storage_is_down(
    pool: Pool, s3: S3Server, bucket: S3Bucket, proxy: TcpProxy
) -> None:
    store = s3.store(bucket, endpoint_url=proxy.url)
    user = await make_user(pool)
    batch = await make_batch(pool, store, user, chat_file(50))  # type: ignore[arg-type]
    proxy.cut()
    with pytest.raises(StorageUnavailable):
        await ingest_next(pool, store, max_requests=1000, now=utcnow)
    async with pool.connection() as conn:
        waiting = await batches.get(conn, batch.id, None)
    assert waiting is not None
    assert waiting.status == "validating" and not waiting.errors
    proxy.restore()
    assert await ingest_next(pool, store, max_requests=1000, now=utcnow) == batch.id
    async with pool.connection() as conn:
        ingested = await batches.get(conn, batch.id, None)
    assert ingested is not None
    assert (ingested.status, ingested.total_count) == ("in_progress", 50)


async def test_expired_files_keep_their_rows_until_their_bytes_are_gone(
    pool: Pool, db_url: str, s3: S3Server, bucket: S3Bucket, proxy: TcpProxy
) -> None:
    """The clean duty deletes an expired file's bytes before its row: while the store is
    down the row stays (so the next run retries it), and nothing is left behind after."""
    store = s3.store(bucket, endpoint_url=proxy.url)
    direct = s3.store(bucket)
    user = await make_user(pool)
    file_id = await make_file(pool, store, user, b"expired bytes\n")  # type: ignore[arg-type]
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE files SET expires_at = now() - interval '1 second' WHERE id = %s", (file_id,)
        )
        record = await files.get(conn, file_id, None)
    assert record is not None
    scheduler = Scheduler(Settings(database_url=db_url), pool, store, Leadership(db_url))
    proxy.cut()
    with pytest.raises(StorageUnavailable):
        await scheduler.clean()
    async with pool.connection() as conn:
        assert await files.get(conn, file_id, None) is not None
    assert direct.exists(record.blob_key)
    proxy.restore()
    assert await scheduler.clean() is False
    async with pool.connection() as conn:
        assert await files.get(conn, file_id, None) is None
    assert not direct.exists(record.blob_key)
