"""Portal: indexes for browsing batches and recent activity; the session-signing secret.

Revision ID: 0002
Revises: 0001

The batch indexes serve the portal's filtered, sorted, keyset-paginated batch list (each
sort it offers has an index whose order matches, with and without a status filter). The
``requests`` index serves "finished in the last hour" statistics and charts without
scanning the whole table; it is built CONCURRENTLY because ``requests`` is the hot queue
table and may already be large (a plain CREATE INDEX would block workers' writes).
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX batches_status_created ON batches (status, created_at DESC, id DESC);
CREATE INDEX batches_owner_status_created
    ON batches (owner_id, status, created_at DESC, id DESC);
CREATE INDEX batches_deadline ON batches (deadline_at, id);
CREATE INDEX batches_priority_created ON batches (priority DESC, created_at DESC, id DESC);

-- One row per named secret; 'session' signs portal session cookies unless
-- INFERBATCH_SESSION_SECRET is set. Kept here so every api replica signs alike.
CREATE TABLE portal_secrets (
    name        text PRIMARY KEY,
    secret      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
"""

# Run one at a time outside a transaction (CONCURRENTLY requires it); dropping first makes
# a retry after an interrupted build (which leaves an invalid index) succeed.
REQUESTS_INDEX = (
    "DROP INDEX CONCURRENTLY IF EXISTS requests_finished",
    "CREATE INDEX CONCURRENTLY requests_finished ON requests (finished_at)"
    " WHERE finished_at IS NOT NULL",
)

DOWNGRADE = """
DROP INDEX IF EXISTS requests_finished;
DROP TABLE portal_secrets;
DROP INDEX batches_priority_created;
DROP INDEX batches_deadline;
DROP INDEX batches_owner_status_created;
DROP INDEX batches_status_created;
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    with op.get_context().autocommit_block():
        for statement in REQUESTS_INDEX:
            op.execute(statement)


def downgrade() -> None:
    op.execute(DOWNGRADE)
