"""Shared set-up for benchmarks: a private database on a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from inferbatch.blobstore import LocalBlobStore, new_blob_key
from inferbatch.config import Settings
from inferbatch.db import files, users
from inferbatch.db.connector import embedded_url, migrate, open_pool, stop_embedded
from inferbatch.domain import DEFAULT_PROJECT_ID, Principal
from inferbatch.ids import new_id
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import batches as batch_service

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota")


def _with_dbname(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextmanager
def bench_server() -> Iterator[str]:
    """INFERBATCH_BENCH_DATABASE_URL's server, or a private embedded PostgreSQL."""
    external = os.environ.get("INFERBATCH_BENCH_DATABASE_URL")
    if external:
        yield external
        return
    data_dir = Path(tempfile.mkdtemp(prefix="ibbench-"))
    try:
        yield embedded_url(data_dir)
    finally:
        stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)  # a full-size run leaves gigabytes


@contextmanager
def fresh_database(server: str, *, migrated: bool = True) -> Iterator[str]:
    """A new database on ``server`` (migrated unless told otherwise), dropped afterwards."""
    name = f"ib_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_dbname(server, name)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def bench_database() -> Iterator[str]:
    """A fresh migrated database on the benchmark server; dropped afterwards."""
    with bench_server() as server, fresh_database(server) as url:
        yield url


def write_input(blobs: LocalBlobStore, n: int, prefix: str = "request") -> tuple[str, int]:
    """An input file of ``n`` chat requests of about 1 KB each; returns (blob key, bytes)."""
    rng = random.Random(7)
    key = new_blob_key("upload")
    with blobs.open_writer(key) as w:
        buf: list[str] = []
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(140))[:900]
            buf.append(
                json.dumps(
                    {
                        "custom_id": f"{prefix}-{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "model": "llama-3.1-8b-instruct",
                            "messages": [{"role": "user", "content": text}],
                            "max_tokens": 128,
                        },
                    }
                )
                + "\n"
            )
            if len(buf) == 5000:
                w.write("".join(buf).encode())
                buf.clear()
        w.write("".join(buf).encode())
    return key, w.size


def write_lines(blobs: LocalBlobStore, lines: list[str]) -> tuple[str, int]:
    """An input file of these JSONL lines; returns (blob key, bytes)."""
    key = new_blob_key("upload")
    with blobs.open_writer(key) as w:
        w.write("".join(line.rstrip("\n") + "\n" for line in lines).encode())
    return key, w.size


async def create_batch(
    url: str,
    blobs: LocalBlobStore,
    n: int,
    prefix: str = "request",
    metadata: dict[str, str] | None = None,
    lines: list[str] | None = None,
    project_id: str = DEFAULT_PROJECT_ID,
) -> str:
    """A validating batch of ``project_id`` over a new ``n``-line input file (not ingested
    yet); ``lines`` gives the file's lines instead."""
    key, size = write_input(blobs, n, prefix) if lines is None else write_lines(blobs, lines)
    if lines is not None:
        n = len(lines)
    now = datetime.now(UTC)
    async with open_pool(url, max_size=1) as pool, pool.connection() as conn:
        user = Principal.of_user(
            await users.ensure_user(conn, "bench", is_admin=False), project_id, role="owner"
        )
        record = await files.insert(
            conn,
            file_id=new_id("file-"),
            owner_id=user.id,
            project_id=project_id,
            purpose="batch",
            filename="in.jsonl",
            size=size,
            sha256="",
            blob_key=key,
            expires_at=now + timedelta(days=1),
        )
        new = batch_service.new_batch(
            Settings(max_requests_per_batch=n),
            input_file_id=record.id,
            endpoint="/v1/chat/completions",
            completion_window="7d",
        )
        batch = await batch_service.create(conn, user, new, now)
    return batch.id


async def fill_queue(url: str, blobs: LocalBlobStore, n: int, prefix: str = "request") -> str:
    """Queue ``n`` requests of about 1 KB (one batch, ingested); returns the batch id."""
    batch_id = await create_batch(url, blobs, n, prefix)
    async with open_pool(url, max_size=1) as pool:
        done = await ingest_next(pool, blobs, max_requests=n, now=lambda: datetime.now(UTC))
    assert done == batch_id
    return batch_id
