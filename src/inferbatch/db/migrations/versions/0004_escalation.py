"""SLA escalation: why and when a request moved to the dedicated pool, per-batch counts,
and the scheduler's last decision (desired dedicated workers) for metrics.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE requests ADD COLUMN escalation_reason text;
ALTER TABLE requests ADD COLUMN escalated_at timestamptz;
ALTER TABLE batches ADD COLUMN escalated_count integer NOT NULL DEFAULT 0;

-- Small named values the scheduler leader publishes (e.g. desired dedicated workers).
CREATE TABLE scheduler_state (
    name        text PRIMARY KEY,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
"""

DOWNGRADE = """
DROP TABLE scheduler_state;
ALTER TABLE batches DROP COLUMN escalated_count;
ALTER TABLE requests DROP COLUMN escalated_at;
ALTER TABLE requests DROP COLUMN escalation_reason;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
