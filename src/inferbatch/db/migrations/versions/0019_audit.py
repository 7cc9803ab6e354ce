"""The audit log: one append-only row per change made through the API, the portal or the CLI.

Revision ID: 0019
Revises: 0018

- ``audit_logs``: ``seq`` (the order of writing; the public id is made from it and
  ``effective_at``), ``effective_at``, the event ``type`` (``batch.created``,
  ``login.failed``, ...), the ``project_id`` it concerns, the actor (``actor_type``
  ``session``, ``api_key`` or ``cli``; the user's or service account's id and name; the key
  id; for a refused key only its first characters; the client's address and user agent),
  the ``object_id`` acted on, the ``result`` (``succeeded`` or ``failed``, the HTTP status
  and error code) and a small JSON of non-secret details. Request bodies, key values,
  secrets, cookies and headers are never written.
- No foreign keys: a row outlives what it names and never changes.
- Every list filter has an index that ends in ``(effective_at, seq)``, the list order, so
  a page is one index range; the retention purge reads the plain ``(effective_at, seq)``.
- A trigger refuses UPDATE, TRUNCATE and DELETE, except a DELETE in a transaction that set
  ``inferbatch.audit_purge`` to ``on`` (the retention purge, ``db/audit.py``). It guards
  against mistakes of the application, not against a database superuser.
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE audit_logs (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    effective_at  timestamptz NOT NULL DEFAULT now(),
    type          text NOT NULL,
    project_id    text,
    actor_type    text NOT NULL,
    actor_id      text,
    actor_name    text,
    service_account boolean NOT NULL DEFAULT false,
    key_id        text,
    key_prefix    text,
    ip_address    text,
    user_agent    text,
    object_id     text,
    result        text NOT NULL,
    status_code   integer,
    error_code    text,
    data          jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT audit_logs_actor_type_check CHECK (actor_type IN ('session', 'api_key', 'cli')),
    CONSTRAINT audit_logs_result_check CHECK (result IN ('succeeded', 'failed'))
);
CREATE INDEX audit_logs_effective ON audit_logs (effective_at, seq);
CREATE INDEX audit_logs_project ON audit_logs (project_id, effective_at, seq);
CREATE INDEX audit_logs_type ON audit_logs (type, effective_at, seq);
CREATE INDEX audit_logs_actor ON audit_logs (actor_id, effective_at, seq)
    WHERE actor_id IS NOT NULL;
CREATE INDEX audit_logs_actor_name ON audit_logs (actor_name, effective_at, seq)
    WHERE actor_name IS NOT NULL;
CREATE INDEX audit_logs_key ON audit_logs (key_id, effective_at, seq) WHERE key_id IS NOT NULL;
CREATE INDEX audit_logs_object ON audit_logs (object_id, effective_at, seq)
    WHERE object_id IS NOT NULL;

CREATE FUNCTION audit_logs_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('inferbatch.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_logs is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION audit_logs_append_only();
CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_append_only();
"""

DOWNGRADE = """
DROP TABLE audit_logs;
DROP FUNCTION audit_logs_append_only();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
