"""Retention: the request rows of finished batches are pruned, the batches stay listed.

When a batch finishes, :func:`schedule` records when its request rows (inputs, queue rows
and results) go: ``batches.requests_expire_at``, by default when its output file expires.
The leader's retention duty then calls :func:`prune_step` until nothing is due. Each step
is one short transaction that deletes at most ``limit`` requests of one due batch from the
three tables, so it holds few locks, never touches live work (a finished batch has none)
and leaves autovacuum a steady trickle of dead rows to reclaim rather than one huge
delete. Finding a due batch reads the small partial index of batches still holding rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from inferbatch.db.types import Conn

PRUNE_STEP = 5000
"""Requests deleted per step (per transaction)."""


async def schedule(conn: Conn, batch_id: str, expire_at: datetime) -> None:
    """Prune the request rows of finished batch ``batch_id`` at ``expire_at``."""
    await conn.execute(
        "UPDATE batches SET requests_expire_at = %s WHERE id = %s", (expire_at, batch_id)
    )


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one step did: the batch it worked on (None when none was due), how many
    requests it deleted, and whether that batch is now done."""

    batch_id: str | None
    requests: int
    finished: bool


_STEP = """
WITH doomed AS (
    SELECT id FROM request_inputs WHERE batch_id = %(batch)s ORDER BY line LIMIT %(limit)s
), queue_rows AS (
    DELETE FROM requests WHERE id IN (SELECT id FROM doomed)
), result_rows AS (
    DELETE FROM request_results WHERE request_id IN (SELECT id FROM doomed)
)
DELETE FROM request_inputs WHERE id IN (SELECT id FROM doomed)
"""


async def prune_step(conn: Conn, now: datetime, limit: int = PRUNE_STEP) -> Pruned:
    """Delete up to ``limit`` requests of the batch whose rows are most overdue (skipping
    a batch another replica is pruning); when it has none left, mark it pruned. The caller
    commits: one step, one transaction."""
    cur = await conn.execute(
        """
        SELECT id FROM batches
        WHERE requests_expire_at IS NOT NULL AND requests_expire_at <= %s
        ORDER BY requests_expire_at LIMIT 1
        FOR UPDATE SKIP LOCKED
        """,
        (now,),
    )
    row = await cur.fetchone()
    if row is None:
        return Pruned(None, 0, False)
    batch_id = str(row["id"])
    deleted = (await conn.execute(_STEP, {"batch": batch_id, "limit": limit})).rowcount
    finished = deleted < limit
    if finished:
        await conn.execute(
            "UPDATE batches SET requests_expire_at = NULL, requests_pruned_at = %s WHERE id = %s",
            (now, batch_id),
        )
    return Pruned(batch_id, deleted, finished)
