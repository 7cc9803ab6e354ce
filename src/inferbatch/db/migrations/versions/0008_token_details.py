"""Cached input tokens and reasoning output tokens, counted through to a batch's usage.

Revision ID: 0008
Revises: 0007

An engine reports them in the usage of its answer: ``prompt_tokens_details.cached_tokens``
and ``completion_tokens_details.reasoning_tokens`` (chat and completions), or
``input_tokens_details`` / ``output_tokens_details`` (responses). A result keeps them
beside its token counts, the counter deltas carry them, and a batch's ``usage`` shows them.
Results recorded before this migration count 0 (their bodies are not read again).
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE request_results ADD COLUMN cached_tokens integer,
    ADD COLUMN reasoning_tokens integer;
ALTER TABLE request_deltas ADD COLUMN cached_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN cached_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0;
"""

DOWNGRADE = """
ALTER TABLE batches DROP COLUMN cached_tokens, DROP COLUMN reasoning_tokens;
ALTER TABLE request_deltas DROP COLUMN cached_tokens, DROP COLUMN reasoning_tokens;
ALTER TABLE request_results DROP COLUMN cached_tokens, DROP COLUMN reasoning_tokens;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
