"""Estimated completion times, admission warnings, and the line count of uploaded files.

Revision ID: 0015
Revises: 0014

- ``batches.estimated_completion_at``: when the batch's last request is expected to settle
  (``inferbatch.policy.eta``). Set at create (the first estimate) and by the escalate duty
  while the batch runs, only when it moves by more than a few seconds or percent; NULL
  when unknown (no capacity now or asked for) or never estimated. Not indexed: a changed
  estimate is a HOT update of the batch row.
- ``batches.warnings``: what admission found at create (a JSON list of ``{code, message,
  param}``), when the deployment accepts batches that cannot meet their window with a
  warning; NULL when there is none.
- ``files.line_count``: lines of the file, counted while it was uploaded (``POST
  /v1/files``): the requests of a batch input before it is read (blank lines count too, so
  it is an upper bound). NULL for files whose lines were not counted (uploaded before this
  revision, composed from upload parts, written by a batch).
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE batches ADD COLUMN estimated_completion_at timestamptz,
    ADD COLUMN warnings jsonb;
ALTER TABLE files ADD COLUMN line_count integer;
"""

DOWNGRADE = """
ALTER TABLE files DROP COLUMN line_count;
ALTER TABLE batches DROP COLUMN estimated_completion_at, DROP COLUMN warnings;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
