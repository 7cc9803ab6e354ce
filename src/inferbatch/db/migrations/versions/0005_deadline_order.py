"""Claim order: priority first, then the earliest deadline (was: the oldest batch).

Within a priority the queue serves the batch whose deadline comes first. When every batch
has the same completion window (the OpenAI case: 24h) this is the same order as before;
with mixed windows, a 1 h batch created behind a day of 24 h work is no longer starved of
spot capacity until only dedicated workers can save it. Requests carry their batch's
deadline, as they carry its priority, so the partial queue index matches the claim.

The backfill rewrites every row of ``requests``: on a large table, run it in a quiet hour.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE requests ADD COLUMN deadline_at timestamptz;
UPDATE requests r SET deadline_at = b.deadline_at FROM batches b WHERE b.id = r.batch_id;
ALTER TABLE requests ALTER COLUMN deadline_at SET NOT NULL;
DROP INDEX requests_queue;
-- The hot index: exactly the claim statement's filter and ORDER BY, queued rows only.
CREATE INDEX requests_queue ON requests (pool, priority DESC, deadline_at, id)
    WHERE status = 'queued';
"""

DOWNGRADE = """
DROP INDEX requests_queue;
CREATE INDEX requests_queue ON requests (pool, priority DESC, batch_created_at, id)
    WHERE status = 'queued';
ALTER TABLE requests DROP COLUMN deadline_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
