"""Per-project quotas: limits set by admins and the usage they are checked against.

Revision ID: 0018
Revises: 0017

- ``project_quotas``: a project's limits (NULL: unlimited) on queued requests, enqueued
  tokens, batches in progress, stored bytes and batch creates per minute.
- ``project_usage``: what the checks read, one row per project, moved by triggers in the
  transaction of the change (never recounted): ``stored_bytes`` by every insert and delete
  of a file (upload, output written, deleted, expired); ``batches_in_progress``,
  ``queued_requests`` and ``enqueued_tokens`` by the batch rows' held amounts (below);
  ``minute`` and ``minute_creates``: the creates of the current minute (a fixed window).
- ``batches.quota_requests`` / ``quota_tokens``: what a batch still holds of its project's
  usage. Set at create (the input file's line count and token estimate), set to the real
  request count at ingest, lowered by the counter fold as requests settle (tokens in
  proportion) and zeroed when the batch reaches a terminal status. A batch counts in its
  project's usage while it is not terminal.
- ``files.token_estimate``: the file's estimated tokens (input plus the most each request
  may write), computed at upload; NULL for files made before or through the Uploads API.

Existing live batches hold their unsettled requests from here on; their tokens are not
known (0).
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TERMINAL = "('completed', 'failed', 'expired', 'cancelled')"

UPGRADE = f"""
CREATE TABLE project_quotas (
    project_id          text PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    queued_requests     bigint CHECK (queued_requests >= 0),
    enqueued_tokens     bigint CHECK (enqueued_tokens >= 0),
    batches_in_progress bigint CHECK (batches_in_progress >= 0),
    stored_bytes        bigint CHECK (stored_bytes >= 0),
    creates_per_minute  bigint CHECK (creates_per_minute >= 0),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE project_usage (
    project_id          text PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    queued_requests     bigint NOT NULL DEFAULT 0,
    enqueued_tokens     bigint NOT NULL DEFAULT 0,
    batches_in_progress bigint NOT NULL DEFAULT 0,
    stored_bytes        bigint NOT NULL DEFAULT 0,
    minute              timestamptz,
    minute_creates      bigint NOT NULL DEFAULT 0
);

ALTER TABLE files ADD COLUMN token_estimate bigint;
ALTER TABLE batches
    ADD COLUMN quota_requests bigint NOT NULL DEFAULT 0,
    ADD COLUMN quota_tokens bigint NOT NULL DEFAULT 0;

-- The one count: from now on the triggers below move the usage.
UPDATE batches b SET quota_requests = CASE WHEN b.ingested_at IS NULL
        THEN coalesce((SELECT f.line_count FROM files f WHERE f.id = b.input_file_id), 0)
        ELSE greatest(0, b.total_count - b.completed_count - b.failed_count
            - b.cancelled_count - b.expired_count) END
WHERE b.status NOT IN {TERMINAL};
INSERT INTO project_usage (project_id, stored_bytes, batches_in_progress, queued_requests)
SELECT p.id,
    coalesce((SELECT sum(f.bytes) FROM files f WHERE f.project_id = p.id), 0),
    (SELECT count(*) FROM batches b WHERE b.project_id = p.id AND b.status NOT IN {TERMINAL}),
    coalesce((SELECT sum(b.quota_requests) FROM batches b
        WHERE b.project_id = p.id AND b.status NOT IN {TERMINAL}), 0)
FROM projects p;

CREATE FUNCTION project_usage_files() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE project_usage SET stored_bytes = stored_bytes - OLD.bytes
        WHERE project_id = OLD.project_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO project_usage AS u (project_id, stored_bytes)
        VALUES (NEW.project_id, NEW.bytes)
        ON CONFLICT (project_id) DO UPDATE
            SET stored_bytes = u.stored_bytes + EXCLUDED.stored_bytes;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER project_usage_files AFTER INSERT OR DELETE ON files
    FOR EACH ROW EXECUTE FUNCTION project_usage_files();
CREATE TRIGGER project_usage_files_update AFTER UPDATE ON files
    FOR EACH ROW WHEN (OLD.bytes IS DISTINCT FROM NEW.bytes
        OR OLD.project_id IS DISTINCT FROM NEW.project_id)
    EXECUTE FUNCTION project_usage_files();

-- A batch that becomes terminal gives back all it still holds.
CREATE FUNCTION batch_quota_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.quota_requests := 0;
    NEW.quota_tokens := 0;
    RETURN NEW;
END
$$;
CREATE TRIGGER batch_quota_release BEFORE UPDATE ON batches
    FOR EACH ROW WHEN (NEW.status IN {TERMINAL}
        AND (NEW.quota_requests <> 0 OR NEW.quota_tokens <> 0))
    EXECUTE FUNCTION batch_quota_release();

-- A live (not terminal) batch counts once and with what it holds.
CREATE FUNCTION project_usage_batches() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d_batches bigint := 0;
    d_requests bigint := 0;
    d_tokens bigint := 0;
    project text;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        project := OLD.project_id;
        IF OLD.status NOT IN {TERMINAL} THEN
            d_batches := -1;
            d_requests := -OLD.quota_requests;
            d_tokens := -OLD.quota_tokens;
        END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        project := NEW.project_id;
        IF NEW.status NOT IN {TERMINAL} THEN
            d_batches := d_batches + 1;
            d_requests := d_requests + NEW.quota_requests;
            d_tokens := d_tokens + NEW.quota_tokens;
        END IF;
    END IF;
    IF d_batches <> 0 OR d_requests <> 0 OR d_tokens <> 0 THEN
        INSERT INTO project_usage AS u (project_id, batches_in_progress, queued_requests,
            enqueued_tokens)
        VALUES (project, d_batches, d_requests, d_tokens)
        ON CONFLICT (project_id) DO UPDATE SET
            batches_in_progress = u.batches_in_progress + EXCLUDED.batches_in_progress,
            queued_requests = u.queued_requests + EXCLUDED.queued_requests,
            enqueued_tokens = u.enqueued_tokens + EXCLUDED.enqueued_tokens;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER project_usage_batches AFTER INSERT OR DELETE ON batches
    FOR EACH ROW EXECUTE FUNCTION project_usage_batches();
CREATE TRIGGER project_usage_batches_update AFTER UPDATE ON batches
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
        OR OLD.quota_requests <> NEW.quota_requests OR OLD.quota_tokens <> NEW.quota_tokens)
    EXECUTE FUNCTION project_usage_batches();
"""

DOWNGRADE = """
DROP TRIGGER project_usage_batches_update ON batches;
DROP TRIGGER project_usage_batches ON batches;
DROP FUNCTION project_usage_batches();
DROP TRIGGER batch_quota_release ON batches;
DROP FUNCTION batch_quota_release();
DROP TRIGGER project_usage_files_update ON files;
DROP TRIGGER project_usage_files ON files;
DROP FUNCTION project_usage_files();
ALTER TABLE batches DROP COLUMN quota_requests, DROP COLUMN quota_tokens;
ALTER TABLE files DROP COLUMN token_estimate;
DROP TABLE project_usage;
DROP TABLE project_quotas;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
