"""Single sign-on: users found by their OpenID Connect subject, memberships the role map
made told apart from hand-made ones.

Revision ID: 0020
Revises: 0019

- ``users.oidc_subject``: the provider's ``sub`` of a user who signs in with single
  sign-on (unique; None for users made otherwise). A user is found by it on every sign-in,
  whatever their name or email became at the provider.
- ``project_members.source``: ``manual`` (the Administration API, the CLI, migrations) or
  ``oidc`` (granted by ``INFERBATCH_OIDC_ROLE_MAP``). A sign-in adds, changes and removes
  only ``oidc`` memberships; a hand-made one stays as it was made.
- ``projects_name``: the role map names projects by id or name; a sign-in looks them up.
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE users ADD COLUMN oidc_subject text;
CREATE UNIQUE INDEX users_oidc_subject ON users (oidc_subject) WHERE oidc_subject IS NOT NULL;
ALTER TABLE project_members ADD COLUMN source text NOT NULL DEFAULT 'manual',
    ADD CONSTRAINT project_members_source_check CHECK (source IN ('manual', 'oidc'));
CREATE INDEX projects_name ON projects (name, created_at, id);
"""

DOWNGRADE = """
DROP INDEX projects_name;
ALTER TABLE project_members DROP CONSTRAINT project_members_source_check,
    DROP COLUMN source;
DROP INDEX users_oidc_subject;
ALTER TABLE users DROP COLUMN oidc_subject;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
