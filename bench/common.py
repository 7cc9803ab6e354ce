"""Shared set-up for benchmarks: a private database on a real PostgreSQL server."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from inferbatch.db.connector import embedded_url, migrate, stop_embedded


def _with_dbname(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextmanager
def bench_database() -> Iterator[str]:
    """A fresh migrated database on INFERBATCH_BENCH_DATABASE_URL's server, or on an
    embedded PostgreSQL; dropped afterwards."""
    external = os.environ.get("INFERBATCH_BENCH_DATABASE_URL")
    data_dir = None
    if external:
        server = external
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="ibbench-"))
        server = embedded_url(data_dir)
    name = f"ib_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_dbname(server, name)
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if data_dir is not None:
            stop_embedded(data_dir)
