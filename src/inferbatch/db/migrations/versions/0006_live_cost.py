"""Cost that follows the live work: liveness per worker, counters kept as requests settle.

Revision ID: 0006
Revises: 0005

- A request's lease is its owner's liveness: a worker beats once on its own ``workers``
  row, and the leader re-queues the requests of workers whose beat is stale. The
  per-request ``lease_expires_at`` (rewritten for every held row on every beat, and indexed)
  goes, with its index.
- ``request_deltas``: every statement that settles, re-queues or escalates requests appends
  one small row per (batch, pool, status) it changed, in the same statement. The leader
  folds them into ``batches`` (request counts, tokens, dedup and escalation counts) and into
  ``request_totals`` (requests ever settled, by status and pool, for ``/metrics``), then
  deletes them: the fold reads only what changed since the last one, never the history.
  Appending, not updating the batch row, keeps workers from queueing on a batch's row lock.
- ``batch_totals``: batches by status and the requests they ingested, for ``/metrics``
  without a scan of every batch ever made. A trigger on ``batches`` appends each change of
  status (or of ingested requests) to ``batch_total_deltas``; the leader folds those too.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE requests DROP COLUMN lease_expires_at;
CREATE INDEX workers_live ON workers (heartbeat_at) WHERE state IN ('running', 'draining');

CREATE TABLE request_deltas (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id        text NOT NULL,
    pool            text NOT NULL,
    status          text NOT NULL,
    n               integer NOT NULL,
    input_tokens    bigint NOT NULL DEFAULT 0,
    output_tokens   bigint NOT NULL DEFAULT 0,
    deduplicated    integer NOT NULL DEFAULT 0,
    dedup_tokens    bigint NOT NULL DEFAULT 0,
    escalated       integer NOT NULL DEFAULT 0
);
CREATE INDEX request_deltas_batch ON request_deltas (batch_id);

CREATE TABLE request_totals (
    status  text NOT NULL,
    pool    text NOT NULL,
    n       bigint NOT NULL,
    PRIMARY KEY (status, pool)
);
INSERT INTO request_totals (status, pool, n)
SELECT status, pool, count(*) FROM requests
WHERE status NOT IN ('queued', 'running', 'waiting') GROUP BY status, pool;

CREATE TABLE batch_totals (
    status              text PRIMARY KEY,
    batches             bigint NOT NULL,
    ingested_requests   bigint NOT NULL
);
CREATE TABLE batch_total_deltas (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status              text NOT NULL,
    batches             integer NOT NULL,
    ingested_requests   bigint NOT NULL
);
INSERT INTO batch_totals (status, batches, ingested_requests)
SELECT status, count(*), coalesce(sum(total_count) FILTER (WHERE ingested_at IS NOT NULL), 0)
FROM batches GROUP BY status;

CREATE FUNCTION batch_totals_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO batch_total_deltas (status, batches, ingested_requests)
        VALUES (OLD.status, -1,
            -CASE WHEN OLD.ingested_at IS NOT NULL THEN OLD.total_count ELSE 0 END);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO batch_total_deltas (status, batches, ingested_requests)
        VALUES (NEW.status, 1,
            CASE WHEN NEW.ingested_at IS NOT NULL THEN NEW.total_count ELSE 0 END);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER batch_totals_insert_delete AFTER INSERT OR DELETE ON batches
    FOR EACH ROW EXECUTE FUNCTION batch_totals_track();
CREATE TRIGGER batch_totals_update AFTER UPDATE ON batches
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
        OR OLD.ingested_at IS DISTINCT FROM NEW.ingested_at
        OR OLD.total_count IS DISTINCT FROM NEW.total_count)
    EXECUTE FUNCTION batch_totals_track();

-- The last recount: from now on the counters move with the deltas.
UPDATE batches b SET
    completed_count = c.completed, failed_count = c.failed,
    input_tokens = c.input_tokens, output_tokens = c.output_tokens,
    deduplicated_count = c.deduplicated, dedup_tokens_saved = c.saved
FROM (
    SELECT r.batch_id,
        count(*) FILTER (WHERE r.status = 'completed') AS completed,
        count(*) FILTER (WHERE r.status = 'failed') AS failed,
        coalesce(sum(r.prompt_tokens), 0) AS input_tokens,
        coalesce(sum(r.completion_tokens), 0) AS output_tokens,
        count(*) FILTER (WHERE r.status = 'completed' AND r.dedup_of IS NOT NULL)
            AS deduplicated,
        coalesce(sum(r.prompt_tokens + r.completion_tokens) FILTER (
            WHERE r.status = 'completed' AND r.dedup_of IS NOT NULL), 0) AS saved
    FROM requests r
    WHERE r.batch_id IN (
        SELECT id FROM batches WHERE status IN ('in_progress', 'cancelling', 'finalizing'))
    GROUP BY r.batch_id
) c
WHERE b.id = c.batch_id;
"""

DOWNGRADE = """
DROP TRIGGER batch_totals_update ON batches;
DROP TRIGGER batch_totals_insert_delete ON batches;
DROP FUNCTION batch_totals_track();
DROP TABLE batch_total_deltas;
DROP TABLE batch_totals;
DROP TABLE request_totals;
DROP TABLE request_deltas;
DROP INDEX workers_live;
ALTER TABLE requests ADD COLUMN lease_expires_at timestamptz;
UPDATE requests SET lease_expires_at = now() WHERE status = 'running';
CREATE INDEX requests_running_lease ON requests (lease_expires_at) WHERE status = 'running';
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
