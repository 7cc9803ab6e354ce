"""Row-level security: the API's transactions see only their project's rows.

Revision ID: 0022
Revises: 0021

The API runs each transaction it makes for a request as the role ``inferbatch_api``
(``SET LOCAL ROLE``, see ``db/scope.py``) with ``inferbatch.project_id`` set to the
request's project, or ``inferbatch.all_projects = 'on'`` for an admin. The policies below
then allow that role only the project's rows, so a query that forgets its ``project_id``
filter still finds nothing foreign, and an insert or update that would put a row into
another project is refused (``WITH CHECK``). With neither setting made a transaction of the
role sees no tenant row at all.

The role is ``NOLOGIN``: the API keeps connecting as the deployment's user, which must be a
member of it (granted here to the user that migrates; a deployment whose API connects as
another user grants it: ``GRANT inferbatch_api TO <user>``). Roles belong to the cluster,
not the database, so it is created only when missing (several databases of one cluster,
such as test databases, share it) and the downgrade leaves it, removing only this
database's grants and policies. ``ENABLE`` (not ``FORCE``): the tables' owner, which the
scheduler, workers, migrations and the CLI connect as and never leave, bypasses the
policies, as superusers do.

Authentication runs before the role is taken: looking a key up by its hash, a session's
membership, a sign-in's user happen before the project is known, on a connection that acts
as the connecting user (``ScopedPool.unscoped``), as does the audit trail, which records
refused requests too.

Tables, and the rule for each:

- by their own ``project_id``: files, batches, uploads, webhook_endpoints,
  webhook_deliveries, idempotency_keys, usage_daily, usage_deltas, project_quotas,
  project_usage, api_keys, service_accounts, audit_logs (an organisation's event, with no
  project, only admins see);
- project_members: the project's memberships, and the acting user's own in every project
  (``inferbatch.user_id``: the portal lists the projects one may switch to); changes only
  within the project;
- through their batch (``EXISTS`` on ``batches`` by its primary key, one index probe per
  row; requests hold no ``project_id``): requests, request_inputs, request_results,
  request_deltas, batch_events;
- through their upload: upload_parts;
- none, being the organisation's or the system's: projects (the catalogue the admin API
  and the portal's project choice read; routes check membership), users (identities span
  projects), workers, scheduler_state, portal_secrets, location_sets, and the global
  counters request_totals, batch_totals, batch_total_deltas (written by triggers of every
  project's rows).

The role gets data privileges on every table and sequence, and by default on those later
migrations create; a later tenant table adds its own policy.
"""

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

ROLE = "inferbatch_api"

ALL = "current_setting('inferbatch.all_projects', true) = 'on'"
PROJECT = "current_setting('inferbatch.project_id', true)"

BY_PROJECT = (
    "files",
    "batches",
    "uploads",
    "webhook_endpoints",
    "webhook_deliveries",
    "idempotency_keys",
    "usage_daily",
    "usage_deltas",
    "project_quotas",
    "project_usage",
    "api_keys",
    "service_accounts",
    "audit_logs",
)
BY_BATCH = ("requests", "request_inputs", "request_results", "request_deltas", "batch_events")


def _rules() -> list[tuple[str, str, str]]:
    """(table, USING, WITH CHECK) for every table with row security."""
    own = f"({ALL} OR project_id = {PROJECT})"
    rules = [(table, own, own) for table in BY_PROJECT]
    for table in BY_BATCH:
        via_batch = (
            f"({ALL} OR EXISTS (SELECT 1 FROM batches b WHERE b.id = {table}.batch_id"
            f" AND b.project_id = {PROJECT}))"
        )
        rules.append((table, via_batch, via_batch))
    via_upload = (
        f"({ALL} OR EXISTS (SELECT 1 FROM uploads u WHERE u.id = upload_parts.upload_id"
        f" AND u.project_id = {PROJECT}))"
    )
    rules.append(("upload_parts", via_upload, via_upload))
    members = f"({ALL} OR project_id = {PROJECT}"
    rules.append(
        (
            "project_members",
            members + " OR user_id = current_setting('inferbatch.user_id', true))",
            members + ")",
        )
    )
    return rules


CREATE_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
        CREATE ROLE {ROLE} NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database of the cluster created it at the same moment
END
$$;
DO $$
BEGIN
    IF NOT pg_has_role(current_user, '{ROLE}', 'MEMBER') THEN
        EXECUTE format('GRANT {ROLE} TO %I', current_user);
    END IF;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {ROLE};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {ROLE};
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {ROLE};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {ROLE};
"""

DROP_GRANTS = f"""
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE, SELECT ON SEQUENCES FROM {ROLE};
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {ROLE};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {ROLE};
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE};
"""


def upgrade() -> None:
    op.execute(CREATE_ROLE)
    for table, using, check in _rules():
        op.execute(
            f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;\n"
            f"CREATE POLICY project_rows ON {table} FOR ALL TO {ROLE}\n"
            f"    USING {using} WITH CHECK {check};"
        )


def downgrade() -> None:
    for table, _, _ in _rules():
        op.execute(
            f"DROP POLICY project_rows ON {table};\nALTER TABLE {table} DISABLE ROW LEVEL SECURITY;"
        )
    op.execute(DROP_GRANTS)
