"""Anthropic Message Batches: cancelled and expired request counts, and their list index.

Revision ID: 0012
Revises: 0011

A finished batch's ``failed_count`` counts every line of its error file, which holds the
requests that failed and those that were cancelled or expired. Anthropic's
``request_counts`` tell the three apart, so the counter fold also adds up the requests
that ended ``cancelled`` and ``expired`` (``cancelled_count``, ``expired_count``). The
backfill counts the request rows still kept, less the deltas not folded yet (the next fold
adds those).

``GET /v1/messages/batches`` lists only batches of the ``/v1/messages`` endpoint, newest
first: two partial indexes (per owner, and for admins) keep it from reading past the
OpenAI batches.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE batches ADD COLUMN cancelled_count integer NOT NULL DEFAULT 0,
    ADD COLUMN expired_count integer NOT NULL DEFAULT 0;

UPDATE batches b SET cancelled_count = c.cancelled - c.pending_cancelled,
    expired_count = c.expired - c.pending_expired
FROM (
    SELECT r.batch_id,
        count(*) FILTER (WHERE r.status = 'cancelled') AS cancelled,
        count(*) FILTER (WHERE r.status = 'expired') AS expired,
        coalesce((SELECT sum(d.n) FROM request_deltas d
                  WHERE d.batch_id = r.batch_id AND d.status = 'cancelled'), 0)
            AS pending_cancelled,
        coalesce((SELECT sum(d.n) FROM request_deltas d
                  WHERE d.batch_id = r.batch_id AND d.status = 'expired'), 0)
            AS pending_expired
    FROM requests r WHERE r.status IN ('cancelled', 'expired')
    GROUP BY r.batch_id
) c
WHERE b.id = c.batch_id;

CREATE INDEX batches_messages_owner_created ON batches (owner_id, created_at DESC, id DESC)
    WHERE endpoint = '/v1/messages';
CREATE INDEX batches_messages_created ON batches (created_at DESC, id DESC)
    WHERE endpoint = '/v1/messages';
"""

DOWNGRADE = """
DROP INDEX batches_messages_created;
DROP INDEX batches_messages_owner_created;
ALTER TABLE batches DROP COLUMN cancelled_count, DROP COLUMN expired_count;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
