"""Idempotency keys: what a create made under a client's key, so a retry makes nothing new.

The key is claimed in the transaction that creates the object: a concurrent request with
the same key waits on the claim's row lock until that transaction ends, then sees what it
made (or, if it rolled back, claims the key itself). Nothing is stored for a request that
failed, so retrying it after a fix works.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from inferbatch.db.types import Conn


@dataclass(frozen=True, slots=True)
class Earlier:
    """What an earlier request under the same key asked for and made."""

    route: str
    fingerprint: str
    object_id: str


async def claim(
    conn: Conn,
    project_id: str,
    owner_id: str,
    key: str,
    *,
    route: str,
    fingerprint: str,
    object_id: str,
    expires_at: datetime,
) -> Earlier | None:
    """Record that ``object_id`` is made under ``key``: None when this request is the
    first with it, else what the earlier one recorded (this one then makes nothing)."""
    cur = await conn.execute(
        """
        INSERT INTO idempotency_keys (project_id, owner_id, key, route, fingerprint, object_id,
            expires_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (project_id, owner_id, key) DO NOTHING
        RETURNING 1
        """,
        (project_id, owner_id, key, route, fingerprint, object_id, expires_at),
    )
    if await cur.fetchone() is not None:
        return None
    cur = await conn.execute(
        "SELECT route, fingerprint, object_id FROM idempotency_keys WHERE project_id = %s "
        "AND owner_id = %s AND key = %s",
        (project_id, owner_id, key),
    )
    row = await cur.fetchone()
    if row is None:  # expired and cleaned in between: the key is free again
        return await claim(
            conn,
            project_id,
            owner_id,
            key,
            route=route,
            fingerprint=fingerprint,
            object_id=object_id,
            expires_at=expires_at,
        )
    return Earlier(row["route"], row["fingerprint"], row["object_id"])


async def forget_expired(conn: Conn, now: datetime, limit: int = 1000) -> int:
    """Delete up to ``limit`` keys past their expiry (reads the expiry index)."""
    cur = await conn.execute(
        """
        DELETE FROM idempotency_keys WHERE (project_id, owner_id, key) IN (
            SELECT project_id, owner_id, key FROM idempotency_keys WHERE expires_at < %s
            LIMIT %s)
        """,
        (now, limit),
    )
    return cur.rowcount
