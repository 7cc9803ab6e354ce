"""Initial schema: users, keys, files, batches, requests, events, workers.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE users (
    id          text PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    is_admin    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key_hash    bytea NOT NULL UNIQUE,
    prefix      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE files (
    id          text PRIMARY KEY,
    owner_id    text NOT NULL REFERENCES users(id),
    purpose     text NOT NULL,
    filename    text NOT NULL,
    bytes       bigint NOT NULL,
    sha256      text NOT NULL,
    blob_key    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX files_owner_created ON files (owner_id, created_at DESC, id DESC);

CREATE TABLE batches (
    id                  text PRIMARY KEY,
    owner_id            text NOT NULL REFERENCES users(id),
    input_file_id       text NOT NULL,
    endpoint            text NOT NULL,
    completion_window   text NOT NULL,
    deadline_at         timestamptz NOT NULL,
    priority            integer NOT NULL DEFAULT 1,
    dedup_scope         text NOT NULL DEFAULT 'user',
    metadata            jsonb,
    model               text,
    status              text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    ingested_at         timestamptz,
    in_progress_at      timestamptz,
    finalizing_at       timestamptz,
    completed_at        timestamptz,
    failed_at           timestamptz,
    expired_at          timestamptz,
    cancelling_at       timestamptz,
    cancelled_at        timestamptz,
    output_file_id      text,
    error_file_id       text,
    output_expires_seconds bigint,
    errors              jsonb,
    total_count         integer NOT NULL DEFAULT 0,
    completed_count     integer NOT NULL DEFAULT 0,
    failed_count        integer NOT NULL DEFAULT 0,
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    CONSTRAINT batches_status_check CHECK (status IN (
        'validating', 'failed', 'in_progress', 'finalizing', 'completed',
        'expired', 'cancelling', 'cancelled'))
);
CREATE INDEX batches_owner_created ON batches (owner_id, created_at DESC, id DESC);
CREATE INDEX batches_created ON batches (created_at DESC, id DESC);
CREATE INDEX batches_active ON batches (status, created_at)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');

CREATE TABLE requests (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id            text NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    line                integer NOT NULL,
    custom_id           text NOT NULL,
    url                 text NOT NULL,
    model               text NOT NULL,
    body                jsonb NOT NULL,
    input_hash          bytea NOT NULL,
    status              text NOT NULL DEFAULT 'queued',
    pool                text NOT NULL DEFAULT 'spot',
    priority            integer NOT NULL,
    batch_created_at    timestamptz NOT NULL,
    attempts            integer NOT NULL DEFAULT 0,
    failed_attempts     integer NOT NULL DEFAULT 0,
    interruptions       integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT '-infinity',
    lease_owner         text,
    lease_expires_at    timestamptz,
    worker_id           text,
    started_at          timestamptz,
    finished_at         timestamptz,
    response_status     integer,
    response_request_id text,
    response_body       json,
    error               jsonb,
    dedup_of            bigint,
    prompt_tokens       integer,
    completion_tokens   integer,
    CONSTRAINT requests_status_check CHECK (status IN (
        'queued', 'running', 'completed', 'failed', 'cancelled', 'expired')),
    CONSTRAINT requests_pool_check CHECK (pool IN ('spot', 'dedicated'))
);
-- The hot index: exactly the claim statement's filter and ORDER BY, queued rows only.
CREATE INDEX requests_queue ON requests (pool, priority DESC, batch_created_at, id)
    WHERE status = 'queued';
CREATE INDEX requests_batch_line ON requests (batch_id, line);
-- Finds a batch's unfinished requests without scanning its finished ones.
CREATE INDEX requests_unsettled ON requests (batch_id) WHERE status IN ('queued', 'running');
CREATE INDEX requests_batch_custom_id ON requests (batch_id, custom_id);
CREATE INDEX requests_running_lease ON requests (lease_expires_at) WHERE status = 'running';
CREATE INDEX requests_lease_owner ON requests (lease_owner) WHERE status = 'running';

CREATE TABLE batch_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id    text NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    status      text NOT NULL,
    message     text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batch_events_batch ON batch_events (batch_id, id);

CREATE TABLE workers (
    id              text PRIMARY KEY,
    pool            text NOT NULL,
    host            text NOT NULL,
    pid             integer NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    state           text NOT NULL DEFAULT 'running',
    in_flight       integer NOT NULL DEFAULT 0,
    CONSTRAINT workers_state_check CHECK (state IN ('running', 'draining', 'stopped', 'lost'))
);
"""

DOWNGRADE = """
DROP TABLE workers;
DROP TABLE batch_events;
DROP TABLE requests;
DROP TABLE batches;
DROP TABLE files;
DROP TABLE api_keys;
DROP TABLE users;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
