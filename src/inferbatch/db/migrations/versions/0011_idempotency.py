"""Idempotency keys, and the order in which a batch's requests settled.

Revision ID: 0011
Revises: 0010

- ``idempotency_keys``: a create sent with an ``Idempotency-Key`` header records the key,
  a fingerprint of what was asked and the id of what was made, in the transaction that
  made it; a retry with the same key and request gets the same object, another request
  under the key a 409. Keys are kept a day (``expires_at``), then cleaned.
- ``request_results.settled_xid``: the id of the transaction that wrote the result, so
  ``GET /v1/batches/{id}/output`` can hand out results in settle order with a cursor that
  never skips one: a reader only takes results older than every transaction still open
  (``pg_snapshot_xmin``), so no earlier result can appear after it has read past. Rows
  written before this migration carry 0 (they come first). The batch index gains the
  column so a page is one index range.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE idempotency_keys (
    owner_id    text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key         text NOT NULL,
    route       text NOT NULL,
    fingerprint text NOT NULL,
    object_id   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (owner_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

ALTER TABLE request_results ADD COLUMN settled_xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE request_results ALTER COLUMN settled_xid SET DEFAULT pg_current_xact_id();
DROP INDEX request_results_batch;
CREATE INDEX request_results_batch ON request_results (batch_id, settled_xid, request_id);
"""

DOWNGRADE = """
DROP INDEX request_results_batch;
CREATE INDEX request_results_batch ON request_results (batch_id);
ALTER TABLE request_results DROP COLUMN settled_xid;
DROP TABLE idempotency_keys;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
