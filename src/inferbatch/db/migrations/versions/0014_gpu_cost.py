"""What every batch cost: GPU time per request, folded into batches and a daily rollup.

Revision ID: 0014
Revises: 0013

- ``requests.gpu_seconds``: the GPU time of the attempts a request has had so far (a
  retried attempt adds its time when it goes back to the queue); ``request_results
  .gpu_seconds``: the request's GPU time when it settled, the sum over its attempts. A
  deduplicated copy (``dedup_of`` set) holds its origin's time there: GPU time it saved,
  never spent, so a sum over results must leave copies out.
- ``request_deltas`` carry the GPU time each statement spent, split by the pool of the
  worker that spent it (a dedicated worker may run spot-pool work), the GPU time
  deduplication saved, the model, and when they were written (the day of the work).
- ``batches``: the folded GPU-seconds, and their cost fixed at the prices in force when
  they were folded (``gpu_cost``, ``dedup_saved_cost``, ``all_dedicated_cost``; spot saved
  is what is left of all-dedicated), in ``cost_currency``.
- ``usage_daily``: requests, tokens, GPU time and cost per UTC day, owner, model and the
  pool the GPU time was spent on, folded with the batches; a period's figures read these
  rows, never the requests. Objects belong to a user today: when projects come, a
  ``project_id`` column joins the key beside ``owner_id``. Folds append to
  ``usage_deltas``; the leader adds those to ``usage_daily`` (one writer per day row).
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE requests ADD COLUMN gpu_seconds double precision NOT NULL DEFAULT 0;
ALTER TABLE request_results ADD COLUMN gpu_seconds double precision NOT NULL DEFAULT 0;

ALTER TABLE request_deltas
    ADD COLUMN model text,
    ADD COLUMN spot_gpu_seconds double precision NOT NULL DEFAULT 0,
    ADD COLUMN dedicated_gpu_seconds double precision NOT NULL DEFAULT 0,
    ADD COLUMN dedup_gpu_seconds double precision NOT NULL DEFAULT 0,
    ADD COLUMN at timestamptz NOT NULL DEFAULT now();

ALTER TABLE batches
    ADD COLUMN spot_gpu_seconds double precision NOT NULL DEFAULT 0,
    ADD COLUMN dedicated_gpu_seconds double precision NOT NULL DEFAULT 0,
    ADD COLUMN dedup_saved_gpu_seconds double precision NOT NULL DEFAULT 0,
    ADD COLUMN gpu_cost numeric NOT NULL DEFAULT 0,
    ADD COLUMN dedup_saved_cost numeric NOT NULL DEFAULT 0,
    ADD COLUMN all_dedicated_cost numeric NOT NULL DEFAULT 0,
    ADD COLUMN cost_currency text;

CREATE TABLE usage_daily (
    day                     date NOT NULL,
    owner_id                text NOT NULL,
    model                   text NOT NULL,
    pool                    text NOT NULL,
    currency                text NOT NULL,
    requests                bigint NOT NULL DEFAULT 0,
    deduplicated            bigint NOT NULL DEFAULT 0,
    input_tokens            bigint NOT NULL DEFAULT 0,
    output_tokens           bigint NOT NULL DEFAULT 0,
    gpu_seconds             double precision NOT NULL DEFAULT 0,
    dedup_saved_gpu_seconds double precision NOT NULL DEFAULT 0,
    cost                    numeric NOT NULL DEFAULT 0,
    dedup_saved_cost        numeric NOT NULL DEFAULT 0,
    all_dedicated_cost      numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (day, owner_id, model, pool, currency),
    CONSTRAINT usage_daily_pool_check CHECK (pool IN ('spot', 'dedicated'))
);
-- one user's period (the primary key serves everyone's)
CREATE INDEX usage_daily_owner_day ON usage_daily (owner_id, day);
-- What folds add to usage_daily, appended: a batch's finisher folds under its batch lock
-- while it writes the output files, and must not hold a user's day row that long; the
-- leader alone adds these to usage_daily, each tick.
CREATE TABLE usage_deltas (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    day                     date NOT NULL,
    owner_id                text NOT NULL,
    model                   text NOT NULL,
    pool                    text NOT NULL,
    currency                text NOT NULL,
    requests                bigint NOT NULL,
    deduplicated            bigint NOT NULL,
    input_tokens            bigint NOT NULL,
    output_tokens           bigint NOT NULL,
    gpu_seconds             double precision NOT NULL,
    dedup_saved_gpu_seconds double precision NOT NULL,
    cost                    numeric NOT NULL,
    dedup_saved_cost        numeric NOT NULL,
    all_dedicated_cost      numeric NOT NULL
);
"""

DOWNGRADE = """
DROP TABLE usage_deltas;
DROP TABLE usage_daily;
ALTER TABLE batches
    DROP COLUMN spot_gpu_seconds, DROP COLUMN dedicated_gpu_seconds,
    DROP COLUMN dedup_saved_gpu_seconds, DROP COLUMN gpu_cost, DROP COLUMN dedup_saved_cost,
    DROP COLUMN all_dedicated_cost, DROP COLUMN cost_currency;
ALTER TABLE request_deltas
    DROP COLUMN model, DROP COLUMN spot_gpu_seconds, DROP COLUMN dedicated_gpu_seconds,
    DROP COLUMN dedup_gpu_seconds, DROP COLUMN at;
ALTER TABLE request_results DROP COLUMN gpu_seconds;
ALTER TABLE requests DROP COLUMN gpu_seconds;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
