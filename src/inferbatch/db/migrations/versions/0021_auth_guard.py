"""Failed authentications counted per address and key prefix, and portal sessions that
were signed out.

Revision ID: 0021
Revises: 0020

- ``auth_failures``: one row per subject (``address:<ip>`` or ``prefix:<first 7
  characters of the presented key>``), counting failures in a fixed window that starts at
  the subject's first failure; every api replica adds to the same count, so a guesser
  cannot spread its tries over replicas. Rows whose window has passed are deleted by the
  next failure (an indexed range).
- ``portal_signouts``: the nonce of each portal session that signed out, kept until the
  session would have expired anyway, so its cookie is refused by every replica.
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE auth_failures (
    subject text PRIMARY KEY,
    window_start timestamptz NOT NULL,
    failures integer NOT NULL
);
CREATE INDEX auth_failures_window ON auth_failures (window_start);
CREATE TABLE portal_signouts (
    nonce text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX portal_signouts_expiry ON portal_signouts (expires_at);
"""

DOWNGRADE = """
DROP TABLE portal_signouts;
DROP TABLE auth_failures;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
