"""Locations: where a worker runs, and where a batch's requests may run (data residency).

Revision ID: 0016
Revises: 0015

- ``workers.location``: the zone or region a worker declared (``inferbatch worker
  --location``, ``INFERBATCH_LOCATION``); NULL when it declared none.
- ``requests.locations``: the locations a request may run in, copied at ingest from its
  batch's ``metadata.allowed_locations`` in canonical form (sorted, distinct; an entry
  ending in ``*`` is a prefix, ``eu-*``). NULL (almost every row): anywhere. It is written
  once and never updated, so every later move of the row (re-queue, escalation to
  dedicated, rescue, retry) keeps it.
- ``location_sets``: every distinct ``requests.locations`` value ever queued, so a worker
  can find the sets that allow it without reading the queue.
- The queue index becomes two partial indexes. ``requests_queue`` holds only unrestricted
  rows, so the common claim walks exactly what it walked before and a worker never steps
  over restricted rows it may not take. ``requests_queue_restricted`` leads with the
  location set, so a worker reads the head of each set that allows it, one index probe
  per set, and never sees the sets that do not.
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE workers ADD COLUMN location text;
ALTER TABLE requests ADD COLUMN locations text[];
CREATE TABLE location_sets (
    locations text[] PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
DROP INDEX requests_queue;
CREATE INDEX requests_queue ON requests (pool, priority DESC, deadline_at, prefix_key, id)
    WHERE status = 'queued' AND locations IS NULL;
CREATE INDEX requests_queue_restricted
    ON requests (pool, locations, priority DESC, deadline_at, prefix_key, id)
    WHERE status = 'queued' AND locations IS NOT NULL;
"""

DOWNGRADE = """
DROP INDEX requests_queue_restricted;
DROP INDEX requests_queue;
CREATE INDEX requests_queue ON requests (pool, priority DESC, deadline_at, prefix_key, id)
    WHERE status = 'queued';
DROP TABLE location_sets;
ALTER TABLE requests DROP COLUMN locations;
ALTER TABLE workers DROP COLUMN location;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
