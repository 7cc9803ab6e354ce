"""Deduplication: a 'waiting' request status (follows an identical request), hash lookups,
per-batch dedup counts.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE requests DROP CONSTRAINT requests_status_check;
ALTER TABLE requests ADD CONSTRAINT requests_status_check CHECK (status IN (
    'queued', 'running', 'waiting', 'completed', 'failed', 'cancelled', 'expired'));

-- Finds an earlier identical request (same canonical {url, body}) to reuse or follow.
CREATE INDEX requests_input_hash ON requests (input_hash, id);
-- Followers of each leader, to settle them when it finishes.
CREATE INDEX requests_waiting ON requests (dedup_of) WHERE status = 'waiting';
DROP INDEX requests_unsettled;
CREATE INDEX requests_unsettled ON requests (batch_id)
    WHERE status IN ('queued', 'running', 'waiting');

ALTER TABLE batches ADD COLUMN deduplicated_count integer NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN dedup_tokens_saved bigint NOT NULL DEFAULT 0;
"""

DOWNGRADE = """
ALTER TABLE batches DROP COLUMN dedup_tokens_saved;
ALTER TABLE batches DROP COLUMN deduplicated_count;
DROP INDEX requests_unsettled;
CREATE INDEX requests_unsettled ON requests (batch_id) WHERE status IN ('queued', 'running');
DROP INDEX requests_waiting;
DROP INDEX requests_input_hash;
UPDATE requests SET status = 'queued', dedup_of = NULL WHERE status = 'waiting';
ALTER TABLE requests DROP CONSTRAINT requests_status_check;
ALTER TABLE requests ADD CONSTRAINT requests_status_check CHECK (status IN (
    'queued', 'running', 'completed', 'failed', 'cancelled', 'expired'));
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
