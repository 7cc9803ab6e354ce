"""Prefix-aware dispatch: a prompt-prefix key on every request, in the claim order.

Revision ID: 0013
Revises: 0012

``prefix_key`` is a 63-bit hash of the shared head of a request's prompt (computed at
ingest, see :mod:`inferbatch.scheduler.prefix`; 0 when the prompt has none worth caching).
The queue index orders ``(priority DESC, deadline_at, prefix_key, id)``: requests of one
priority and deadline that share a prefix are claimed together, so one engine replica sees
them back to back and its prefix cache serves them, and no deadline is ever traded for a
cache hit. Rows queued before this revision have key 0 and keep their line order.
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE request_inputs ADD COLUMN prefix_key bigint NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN prefix_key bigint NOT NULL DEFAULT 0;
DROP INDEX requests_queue;
CREATE INDEX requests_queue ON requests (pool, priority DESC, deadline_at, prefix_key, id)
    WHERE status = 'queued';
"""

DOWNGRADE = """
DROP INDEX requests_queue;
CREATE INDEX requests_queue ON requests (pool, priority DESC, deadline_at, id)
    WHERE status = 'queued';
ALTER TABLE requests DROP COLUMN prefix_key;
ALTER TABLE request_inputs DROP COLUMN prefix_key;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
