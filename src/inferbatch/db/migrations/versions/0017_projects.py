"""Projects and roles: objects belong to a project, keys to a project and a user or a
service account.

Revision ID: 0017
Revises: 0016

- ``projects``: id (``proj_...``), name, created_at, archived_at. ``proj_default`` is made
  here and holds everything that existed before.
- ``project_members``: a user's role in a project (``owner``, ``member``, ``reader``).
  Every existing user becomes an ``owner`` of the default project.
- ``service_accounts``: a project's non-human principal with a role; ``deleted_at`` once
  deleted (its keys are revoked then, the row stays so objects it made keep a name).
- ``api_keys``: ``project_id`` (existing keys: the default project), ``service_account_id``
  (a key is a user's or a service account's, never both), ``name``, ``expires_at`` and
  ``last_used_at`` (written at most about once a minute per key).
- Tenant tables gain ``project_id``: files, batches, uploads, webhook endpoints, webhook
  deliveries (for the project's recent deliveries), idempotency keys (a key is the
  caller's within one project) and the usage rollup (``usage_deltas``, ``usage_daily``,
  whose key it joins). Requests inherit theirs through their batch: the queue's rows and
  its claim do not change. The column's default is the default project, so adding it
  rewrites no table and rows written without one (older code, a hand-made row) land
  there; every API path names the project.
- Files, batches, uploads and webhook endpoints reference their project.
- ``owner_id`` stays on every table (who made the object: a user or a service account id),
  so its foreign keys to ``users`` go; visibility moves to ``project_id``, and the per-owner
  list indexes become per-project ones.
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

DEFAULT_PROJECT = "proj_default"

UPGRADE = f"""
CREATE TABLE projects (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz
);
INSERT INTO projects (id, name, created_at)
SELECT '{DEFAULT_PROJECT}', 'Default project', coalesce(min(created_at), now()) FROM users;

CREATE TABLE project_members (
    project_id  text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id     text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role        text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, user_id),
    CONSTRAINT project_members_role_check CHECK (role IN ('owner', 'member', 'reader'))
);
CREATE INDEX project_members_user ON project_members (user_id);
INSERT INTO project_members (project_id, user_id, role, added_at)
SELECT '{DEFAULT_PROJECT}', id, 'owner', created_at FROM users;

CREATE TABLE service_accounts (
    id          text PRIMARY KEY,
    project_id  text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        text NOT NULL,
    role        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    CONSTRAINT service_accounts_role_check CHECK (role IN ('owner', 'member', 'reader'))
);
CREATE INDEX service_accounts_project ON service_accounts (project_id, created_at, id);

ALTER TABLE api_keys
    ALTER COLUMN user_id DROP NOT NULL,
    ADD COLUMN project_id text NOT NULL DEFAULT '{DEFAULT_PROJECT}' REFERENCES projects(id),
    ADD COLUMN service_account_id text REFERENCES service_accounts(id),
    ADD COLUMN name text,
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN last_used_at timestamptz,
    ADD CONSTRAINT api_keys_holder_check CHECK ((user_id IS NULL) <> (service_account_id IS NULL));
-- a new key always names its project
ALTER TABLE api_keys ALTER COLUMN project_id DROP DEFAULT;
CREATE INDEX api_keys_project ON api_keys (project_id, created_at, id);

ALTER TABLE files DROP CONSTRAINT files_owner_id_fkey,
    ADD COLUMN project_id text NOT NULL DEFAULT '{DEFAULT_PROJECT}' REFERENCES projects(id);
ALTER TABLE batches DROP CONSTRAINT batches_owner_id_fkey,
    ADD COLUMN project_id text NOT NULL DEFAULT '{DEFAULT_PROJECT}' REFERENCES projects(id);
ALTER TABLE uploads DROP CONSTRAINT uploads_owner_id_fkey,
    ADD COLUMN project_id text NOT NULL DEFAULT '{DEFAULT_PROJECT}' REFERENCES projects(id);
ALTER TABLE webhook_endpoints DROP CONSTRAINT webhook_endpoints_owner_id_fkey,
    ADD COLUMN project_id text NOT NULL DEFAULT '{DEFAULT_PROJECT}' REFERENCES projects(id);
ALTER TABLE webhook_deliveries ADD COLUMN project_id text NOT NULL DEFAULT '{DEFAULT_PROJECT}';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_owner_id_fkey,
    DROP CONSTRAINT idempotency_keys_pkey,
    ADD COLUMN project_id text NOT NULL DEFAULT '{DEFAULT_PROJECT}',
    ADD PRIMARY KEY (project_id, owner_id, key);
ALTER TABLE usage_deltas ADD COLUMN project_id text NOT NULL DEFAULT '{DEFAULT_PROJECT}';
ALTER TABLE usage_daily DROP CONSTRAINT usage_daily_pkey,
    ADD COLUMN project_id text NOT NULL DEFAULT '{DEFAULT_PROJECT}',
    ADD PRIMARY KEY (day, project_id, owner_id, model, pool, currency);

DROP INDEX files_owner_created;
CREATE INDEX files_project_created ON files (project_id, created_at DESC, id DESC);
DROP INDEX batches_owner_created;
CREATE INDEX batches_project_created ON batches (project_id, created_at DESC, id DESC);
DROP INDEX batches_owner_status_created;
CREATE INDEX batches_project_status_created
    ON batches (project_id, status, created_at DESC, id DESC);
DROP INDEX batches_messages_owner_created;
CREATE INDEX batches_messages_project_created ON batches (project_id, created_at DESC, id DESC)
    WHERE endpoint = '/v1/messages';
DROP INDEX webhook_endpoints_owner;
CREATE INDEX webhook_endpoints_project
    ON webhook_endpoints (project_id, created_at DESC, id DESC);
DROP INDEX webhook_deliveries_owner;
CREATE INDEX webhook_deliveries_project ON webhook_deliveries (project_id, id DESC);
DROP INDEX usage_daily_owner_day;
CREATE INDEX usage_daily_project_day ON usage_daily (project_id, day);
"""

# Foreign keys come back NOT VALID: rows a service account made name no user, and a
# downgrade keeps them.
DOWNGRADE = """
DROP INDEX usage_daily_project_day;
CREATE INDEX usage_daily_owner_day ON usage_daily (owner_id, day);
DROP INDEX webhook_deliveries_project;
CREATE INDEX webhook_deliveries_owner ON webhook_deliveries (owner_id, id DESC);
DROP INDEX webhook_endpoints_project;
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner_id, created_at DESC, id DESC);
DROP INDEX batches_messages_project_created;
CREATE INDEX batches_messages_owner_created ON batches (owner_id, created_at DESC, id DESC)
    WHERE endpoint = '/v1/messages';
DROP INDEX batches_project_status_created;
CREATE INDEX batches_owner_status_created
    ON batches (owner_id, status, created_at DESC, id DESC);
DROP INDEX batches_project_created;
CREATE INDEX batches_owner_created ON batches (owner_id, created_at DESC, id DESC);
DROP INDEX files_project_created;
CREATE INDEX files_owner_created ON files (owner_id, created_at DESC, id DESC);

-- rows the same but for their project fold together again
CREATE TEMPORARY TABLE usage_folded AS
SELECT day, owner_id, model, pool, currency, sum(requests) AS requests,
    sum(deduplicated) AS deduplicated, sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens, sum(gpu_seconds) AS gpu_seconds,
    sum(dedup_saved_gpu_seconds) AS dedup_saved_gpu_seconds, sum(cost) AS cost,
    sum(dedup_saved_cost) AS dedup_saved_cost, sum(all_dedicated_cost) AS all_dedicated_cost
FROM usage_daily GROUP BY day, owner_id, model, pool, currency;
DELETE FROM usage_daily;
ALTER TABLE usage_daily DROP CONSTRAINT usage_daily_pkey, DROP COLUMN project_id,
    ADD PRIMARY KEY (day, owner_id, model, pool, currency);
INSERT INTO usage_daily (day, owner_id, model, pool, currency, requests, deduplicated,
    input_tokens, output_tokens, gpu_seconds, dedup_saved_gpu_seconds, cost,
    dedup_saved_cost, all_dedicated_cost)
SELECT * FROM usage_folded;
DROP TABLE usage_folded;
ALTER TABLE usage_deltas DROP COLUMN project_id;
DELETE FROM idempotency_keys k USING idempotency_keys o
WHERE k.owner_id = o.owner_id AND k.key = o.key AND k.project_id > o.project_id;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey, DROP COLUMN project_id,
    ADD PRIMARY KEY (owner_id, key),
    ADD CONSTRAINT idempotency_keys_owner_id_fkey FOREIGN KEY (owner_id)
        REFERENCES users(id) ON DELETE CASCADE NOT VALID;
ALTER TABLE webhook_deliveries DROP COLUMN project_id;
ALTER TABLE webhook_endpoints DROP COLUMN project_id,
    ADD CONSTRAINT webhook_endpoints_owner_id_fkey FOREIGN KEY (owner_id)
        REFERENCES users(id) ON DELETE CASCADE NOT VALID;
ALTER TABLE uploads DROP COLUMN project_id,
    ADD CONSTRAINT uploads_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES users(id) NOT VALID;
ALTER TABLE batches DROP COLUMN project_id,
    ADD CONSTRAINT batches_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES users(id) NOT VALID;
ALTER TABLE files DROP COLUMN project_id,
    ADD CONSTRAINT files_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES users(id) NOT VALID;

-- service-account keys have no user to go back to
DELETE FROM api_keys WHERE user_id IS NULL;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_holder_check,
    DROP COLUMN project_id, DROP COLUMN service_account_id, DROP COLUMN name,
    DROP COLUMN expires_at, DROP COLUMN last_used_at,
    ALTER COLUMN user_id SET NOT NULL;
DROP TABLE service_accounts;
DROP TABLE project_members;
DROP TABLE projects;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
