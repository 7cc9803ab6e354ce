"""Uploads: a large file sent in parts and completed into one file.

Revision ID: 0010
Revises: 0009

- ``uploads``: one row per Upload (OpenAI's Uploads API): what the file will be (name,
  purpose, declared bytes, MIME type, the resulting file's expiry), its status, when it
  expires (an hour after creation), the completion claim (``completing_token``,
  ``completing_at``: a lease, so one complete at a time composes it), and the file it
  became. ``cleared_at`` is set once every part blob of a finished upload is deleted.
- ``upload_parts``: one row per part, written before its bytes arrive (``bytes`` is NULL
  until they are all stored), so every part blob that may exist has a row naming it.
  Rows go with their blobs once the upload is finished: the table holds live parts only.
- Two partial indexes keep the leader's sweep to live uploads: pending ones by expiry,
  and finished ones whose parts are still to delete.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE uploads (
    id                      text PRIMARY KEY,
    owner_id                text NOT NULL REFERENCES users(id),
    filename                text NOT NULL,
    purpose                 text NOT NULL,
    bytes                   bigint NOT NULL CHECK (bytes >= 0),
    mime_type               text NOT NULL,
    file_expires_seconds    bigint NOT NULL,
    status                  text NOT NULL DEFAULT 'pending',
    created_at              timestamptz NOT NULL DEFAULT now(),
    expires_at              timestamptz NOT NULL,
    completing_token        text,
    completing_at           timestamptz,
    file_id                 text,
    finished_at             timestamptz,
    cleared_at              timestamptz,
    CONSTRAINT uploads_status_check CHECK (
        status IN ('pending', 'completed', 'cancelled', 'expired'))
);
CREATE INDEX uploads_pending_expiry ON uploads (expires_at) WHERE status = 'pending';
CREATE INDEX uploads_uncleared ON uploads (finished_at)
    WHERE status <> 'pending' AND cleared_at IS NULL;

CREATE TABLE upload_parts (
    id          text PRIMARY KEY,
    upload_id   text NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    blob_key    text NOT NULL,
    bytes       bigint,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX upload_parts_upload ON upload_parts (upload_id);
"""

DOWNGRADE = """
DROP TABLE upload_parts;
DROP TABLE uploads;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
