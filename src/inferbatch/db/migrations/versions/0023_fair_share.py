"""Fair share: projects share the spot pool's capacity by weight at equal priority.

Revision ID: 0023
Revises: 0022

- ``requests.project_id``: the request's project, copied at ingest from its batch like its
  priority and deadline (adding the column with a default rewrites nothing; every request
  queued before is in the default project).
- ``projects.weight``: the project's share of the spot pool (default 1), set by admins.
- ``requests_queue_project``: the unrestricted queue index led by project within a
  priority, so the active projects are found by a loose index scan (one probe per project)
  and one project's head is one range.
"""

from __future__ import annotations

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE requests ADD COLUMN project_id text NOT NULL DEFAULT 'proj_default';
ALTER TABLE projects ADD COLUMN weight integer NOT NULL DEFAULT 1 CHECK (weight >= 1);
CREATE INDEX requests_queue_project
    ON requests (pool, priority DESC, project_id, deadline_at, prefix_key, id)
    WHERE status = 'queued' AND locations IS NULL;
"""

DOWNGRADE = """
DROP INDEX requests_queue_project;
ALTER TABLE projects DROP COLUMN weight;
ALTER TABLE requests DROP COLUMN project_id;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
