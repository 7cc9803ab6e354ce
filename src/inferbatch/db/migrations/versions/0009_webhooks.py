"""Webhook endpoints, the delivery outbox and per-batch callback URLs.

Revision ID: 0009
Revises: 0008

``webhook_endpoints``: URLs a user registered for batch events (OpenAI's webhook endpoint
objects), each with its signing secret; after a rotation that keeps the old secret active,
``previous_secret`` signs deliveries too until ``previous_secret_expires_at``.
``webhook_deliveries``: the outbox, one row per event and target (an endpoint, or
the batch's own ``callback_url`` when ``endpoint_id`` is NULL), written in the transaction
that moves the batch to its terminal status and sent at least once by the scheduler's
delivery duty. ``payload`` is the exact body that is signed and sent on every attempt; a
pending row's ``next_attempt_at`` is when it is due (while claimed: when its lease ends).
The due query reads the partial index on pending rows only, so its cost follows live work,
not the delivery history.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE batches ADD COLUMN callback_url text, ADD COLUMN callback_secret text;

CREATE TABLE webhook_endpoints (
    id                         text PRIMARY KEY,
    owner_id                   text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name                       text NOT NULL,
    url                        text NOT NULL,
    event_types                text[] NOT NULL,
    secret                     text NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_endpoints_previous_secret_check
        CHECK ((previous_secret IS NULL) = (previous_secret_expires_at IS NULL))
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner_id, created_at DESC, id DESC);

CREATE TABLE webhook_deliveries (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id             text NOT NULL,
    event_type           text NOT NULL,
    batch_id             text NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    owner_id             text NOT NULL,
    endpoint_id          text REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    payload              text NOT NULL,
    status               text NOT NULL DEFAULT 'pending',
    attempts             integer NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL,
    lease_owner          text,
    last_attempt_at      timestamptz,
    last_response_status integer,
    last_error           text,
    created_at           timestamptz NOT NULL,
    finished_at          timestamptz,
    CONSTRAINT webhook_deliveries_status_check
        CHECK (status IN ('pending', 'delivered', 'failed'))
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id DESC)
    WHERE endpoint_id IS NOT NULL;
CREATE INDEX webhook_deliveries_owner ON webhook_deliveries (owner_id, id DESC);
CREATE INDEX webhook_deliveries_batch ON webhook_deliveries (batch_id);
"""

DOWNGRADE = """
DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoints;
ALTER TABLE batches DROP COLUMN callback_url, DROP COLUMN callback_secret;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
