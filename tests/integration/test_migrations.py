"""Migrations move existing data: the narrow queue split keeps every request, its body and
its result, and its downgrade puts them back; 0012 counts the cancelled and expired
requests of existing batches once; 0017 moves users, keys and objects into the default
project; every migration goes down and up again."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from alembic import command
from alembic.config import Config

from inferbatch.db import users
from inferbatch.db.connector import MIGRATIONS_DIR
from inferbatch.services import projects
from tests.conftest import with_dbname

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_url(server_url: str) -> Iterator[str]:
    name = f"ib_migrate_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alembic(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


WIDE_ROWS = """
INSERT INTO users (id, name) VALUES ('u1', 'alice');
INSERT INTO batches (id, owner_id, input_file_id, endpoint, completion_window, deadline_at,
    status) VALUES ('b1', 'u1', 'f1', '/v1/chat/completions', '24h', now() + interval '1 day',
    'in_progress');
INSERT INTO requests (batch_id, line, custom_id, url, model, body, input_hash, status,
    priority, batch_created_at, deadline_at, attempts, lease_owner, started_at, finished_at,
    response_status, response_request_id, response_body, prompt_tokens, completion_tokens,
    worker_id)
VALUES
    ('b1', 1, 'done', '/v1/chat/completions', 'm', '{"model": "m", "n": 1}', '\\x01',
     'completed', 1, now(), now() + interval '1 day', 1, NULL, now(), now(), 200, 'req-1',
     '{"answer":  42}', 3, 4, 'w1'),
    ('b1', 2, 'busy', '/v1/chat/completions', 'm', '{"model": "m", "n": 2}', '\\x02',
     'running', 1, now(), now() + interval '1 day', 2, 'w1', now(), NULL, NULL, NULL, NULL,
     NULL, NULL, 'w1'),
    ('b1', 3, 'todo', '/v1/chat/completions', 'm', '{"model": "m", "n": 3}', '\\x03',
     'queued', 1, now(), now() + interval '1 day', 0, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL);
"""


def test_the_queue_split_keeps_every_request_and_its_result_both_ways(empty_url: str) -> None:
    cfg = _alembic(empty_url)
    command.upgrade(cfg, "0006")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute(WIDE_ROWS)
        ids = dict(conn.execute("SELECT custom_id, id FROM requests").fetchall())

    command.upgrade(cfg, "0007")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        inputs = conn.execute(
            "SELECT custom_id, id, line, body::jsonb FROM request_inputs ORDER BY line"
        ).fetchall()
        assert [(c, i, line) for c, i, line, _ in inputs] == [
            ("done", ids["done"], 1),
            ("busy", ids["busy"], 2),
            ("todo", ids["todo"], 3),
        ]
        assert inputs[0][3] == {"model": "m", "n": 1}
        queue = conn.execute(
            "SELECT id, status, attempts, lease_owner FROM requests ORDER BY id"
        ).fetchall()
        assert queue == [
            (ids["done"], "completed", 1, None),
            (ids["busy"], "running", 2, "w1"),
            (ids["todo"], "queued", 0, None),
        ]
        results = conn.execute(
            "SELECT request_id, status, response_status, response_request_id, "
            "response_body::jsonb, prompt_tokens, completion_tokens, worker_id "
            "FROM request_results"
        ).fetchall()
        assert results == [(ids["done"], "completed", 200, "req-1", {"answer": 42}, 3, 4, "w1")]
        # new ids continue after the migrated ones
        conn.execute(
            "INSERT INTO request_inputs (batch_id, line, custom_id, url, model, body, "
            "input_hash) VALUES ('b1', 4, 'new', '/v1/chat/completions', 'm', '{}', '\\x04')"
        )
        new = conn.execute("SELECT id FROM request_inputs WHERE custom_id = 'new'").fetchone()
        assert new is not None and new[0] > max(ids.values())
        conn.execute("DELETE FROM request_inputs WHERE custom_id = 'new'")

    command.downgrade(cfg, "0006")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT custom_id, status, response_status, response_body::jsonb, prompt_tokens, "
            "body FROM requests ORDER BY line"
        ).fetchall()
    assert rows == [
        ("done", "completed", 200, {"answer": 42}, 3, {"model": "m", "n": 1}),
        ("busy", "running", None, None, None, {"model": "m", "n": 2}),
        ("todo", "queued", None, None, None, {"model": "m", "n": 3}),
    ]


def test_every_migration_downgrades_and_upgrades_again(empty_url: str) -> None:
    cfg = _alembic(empty_url)
    command.upgrade(cfg, "head")
    with psycopg.connect(empty_url) as conn:
        tables = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    command.downgrade(cfg, "base")
    with psycopg.connect(empty_url) as conn:
        left = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert left <= {"alembic_version"}
    command.upgrade(cfg, "head")
    with psycopg.connect(empty_url) as conn:
        again = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert again == tables and "idempotency_keys" in again


MESSAGE_COUNT_ROWS = """
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


def test_existing_batches_get_their_cancelled_and_expired_counts(empty_url: str) -> None:
    cfg = _alembic(empty_url)
    command.upgrade(cfg, "0011")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute(MESSAGE_COUNT_ROWS)
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


GPU_COST_ROWS = """
INSERT INTO users (id, name) VALUES ('u1', 'alice');
INSERT INTO batches (id, owner_id, input_file_id, endpoint, completion_window, deadline_at,
    status) VALUES ('b1', 'u1', 'f1', '/v1/chat/completions', '24h', now(), 'in_progress');
INSERT INTO request_deltas (batch_id, pool, status, n) VALUES ('b1', 'spot', 'completed', 1);
"""


def test_gpu_cost_columns_start_at_zero_and_go_again(empty_url: str) -> None:
    """0014: batches and deltas written before it count no GPU time; its downgrade drops
    the rollup and the columns."""
    cfg = _alembic(empty_url)
    command.upgrade(cfg, "0013")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute(GPU_COST_ROWS)
    command.upgrade(cfg, "0014")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        batch = conn.execute(
            "SELECT spot_gpu_seconds, dedicated_gpu_seconds, gpu_cost, cost_currency FROM batches"
        ).fetchone()
        delta = conn.execute(
            "SELECT model, spot_gpu_seconds, dedup_gpu_seconds, at IS NOT NULL FROM request_deltas"
        ).fetchone()
        usage = conn.execute("SELECT count(*) FROM usage_daily").fetchone()
    assert batch == (0.0, 0.0, 0, None)
    assert delta == (None, 0.0, 0.0, True)
    assert usage == (0,)
    command.downgrade(cfg, "0013")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        tables = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name IN ('batches', 'requests', 'request_results')"
            )
        }
    assert not {"usage_daily", "usage_deltas"} & tables
    assert not {"gpu_seconds", "gpu_cost", "spot_gpu_seconds"} & columns


PRE_PROJECT_ROWS = """
INSERT INTO users (id, name, is_admin) VALUES ('u1', 'alice', false), ('u2', 'root', true);
INSERT INTO api_keys (id, user_id, key_hash, prefix)
VALUES ('k1', 'u1', sha256('ib-alice'::bytea), 'ib-alic'),
    ('k2', 'u2', sha256('ib-root'::bytea), 'ib-root');
INSERT INTO files (id, owner_id, purpose, filename, bytes, sha256, blob_key)
VALUES ('f1', 'u1', 'batch', 'in.jsonl', 1, 'x', 'blob-1');
INSERT INTO batches (id, owner_id, input_file_id, endpoint, completion_window, deadline_at,
    status) VALUES ('b1', 'u1', 'f1', '/v1/chat/completions', '24h', now(), 'in_progress');
"""


def test_existing_users_and_keys_move_into_the_default_project(empty_url: str) -> None:
    """0017: every user becomes an owner of ``proj_default``, every key and object is its;
    the keys still authenticate; the downgrade keeps the users, keys and objects."""
    cfg = _alembic(empty_url)
    command.upgrade(cfg, "0016")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute(PRE_PROJECT_ROWS)
    command.upgrade(cfg, "0017")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        members = conn.execute(
            "SELECT project_id, user_id, role FROM project_members ORDER BY user_id"
        ).fetchall()
        keys = conn.execute("SELECT id, project_id FROM api_keys ORDER BY id").fetchall()
        owned = conn.execute(
            "SELECT project_id FROM files UNION ALL SELECT project_id FROM batches"
        ).fetchall()
        project = conn.execute("SELECT id, archived_at FROM projects").fetchall()
        holder = conn.execute(
            users.KEY_HOLDER, (users.hash_key("ib-alice"),), prepare=False
        ).fetchone()
    assert members == [("proj_default", "u1", "owner"), ("proj_default", "u2", "owner")]
    assert keys == [("k1", "proj_default"), ("k2", "proj_default")]
    assert owned == [("proj_default",), ("proj_default",)]
    assert project == [("proj_default", None)]
    assert holder is not None
    principal = projects.principal_of(users.KeyHolder(*holder), datetime.now(UTC))
    assert (principal.id, principal.project_id, principal.role) == ("u1", "proj_default", "owner")
    command.downgrade(cfg, "0016")
    with psycopg.connect(empty_url, autocommit=True) as conn:
        assert conn.execute("SELECT id, user_id FROM api_keys ORDER BY id").fetchall() == [
            ("k1", "u1"),
            ("k2", "u2"),
        ]
        assert conn.execute("SELECT id, owner_id FROM batches").fetchall() == [("b1", "u1")]
