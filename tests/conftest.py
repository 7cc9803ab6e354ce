"""Shared fixtures: a real PostgreSQL for every test that touches SQL.

The server is ``INFERBATCH_TEST_DATABASE_URL`` when set, else a private embedded
PostgreSQL started once per session. Each test gets a fresh database cloned from a
migrated template (``CREATE DATABASE ... TEMPLATE``), so tests never share rows.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from inferbatch.db.connector import embedded_url, migrate, open_pool, stop_embedded
from inferbatch.db.types import Pool


def with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    external = os.environ.get("INFERBATCH_TEST_DATABASE_URL")
    if external:
        yield external
        return
    data_dir = Path(tempfile.mkdtemp(prefix="ibtest-"))
    try:
        yield embedded_url(data_dir)
    finally:
        stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    name = f"ib_template_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_dbname(server_url, name)
    migrate(url)
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def cloned_database(server_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database, dropped afterwards."""
    name = f"ib_test_{secrets.token_hex(6)}"
    template = urlsplit(template_url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(server_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    with cloned_database(server_url, template_url) as url:
        yield url


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[Pool]:
    async with open_pool(db_url, max_size=8) as p:
        yield p
