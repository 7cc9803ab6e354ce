"""Migration 0012 counts the cancelled and expired requests of existing batches once, less
the counter deltas not folded yet (the next fold adds those), and goes back cleanly."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from alembic.config import Config

from inferbatch.db.connector import MIGRATIONS_DIR
from tests.conftest import with_dbname

pytestmark = pytest.mark.integration

ROWS = """
INSERT INTO users (id, name) VALUES ('u1', 'alice');
INSERT INTO batches (id, owner_id, input_file_id, endpoint, completion_window, deadline_at,
    status) VALUES ('b1', 'u1', 'f1', '/v1/messages', '24h', now(), 'cancelled'),
    ('b2', 'u1', 'f2', '/v1/chat/completions', '24h', now(), 'expired');
INSERT INTO request_inputs (id, batch_id, line, custom_id, url, model, body, input_hash)
VALUES (1, 'b1', 1, 'a', '/v1/messages', 'm', '{}', '\\x01'),
    (2, 'b1', 2, 'b', '/v1/messages', 'm', '{}', '\\x02'),
    (3, 'b1', 3, 'c', '/v1/messages', 'm', '{}', '\\x03'),
    (4, 'b2', 1, 'd', '/v1/chat/completions', 'm', '{}', '\\x04'),
    (5, 'b2', 2, 'e', '/v1/chat/completions', 'm', '{}', '\\x05');
INSERT INTO requests (id, batch_id, status, priority, deadline_at, batch_created_at)
VALUES (1, 'b1', 'cancelled', 1, now(), now()), (2, 'b1', 'cancelled', 1, now(), now()),
    (3, 'b1', 'completed', 1, now(), now()), (4, 'b2', 'expired', 1, now(), now()),
    (5, 'b2', 'failed', 1, now(), now());
-- one cancellation not folded yet
INSERT INTO request_deltas (batch_id, pool, status, n) VALUES ('b1', 'spot', 'cancelled', 1);
"""


@pytest.fixture
def empty_url(server_url: str) -> Iterator[str]:
    name = f"ib_migrate_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_existing_batches_get_their_cancelled_and_expired_counts(empty_url: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", empty_url.replace("%", "%%"))
    command.upgrade(cfg, "0011")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute(ROWS)
    command.upgrade(cfg, "0012")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        counts = conn.execute(
            "SELECT id, cancelled_count, expired_count FROM batches ORDER BY id"
        ).fetchall()
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'batches'"
            ).fetchall()
        }
    assert counts == [("b1", 1, 0), ("b2", 0, 1)]
    assert {"batches_messages_owner_created", "batches_messages_created"} <= indexes
    command.downgrade(cfg, "0011")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'batches'"
            ).fetchall()
        }
    assert not {"cancelled_count", "expired_count"} & columns
