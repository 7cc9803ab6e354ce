"""Failed authentications (counted per subject in a fixed window) and signed-out portal
sessions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from inferbatch.db.types import Conn

RECORD_FAILURES = """
INSERT INTO auth_failures AS f (subject, window_start, failures)
SELECT s, %(now)s, 1 FROM unnest(%(subjects)s::text[]) AS s
ON CONFLICT (subject) DO UPDATE SET
    failures = CASE WHEN f.window_start > %(now)s - %(window)s THEN f.failures + 1 ELSE 1 END,
    window_start = CASE WHEN f.window_start > %(now)s - %(window)s
        THEN f.window_start ELSE %(now)s END
RETURNING subject, window_start, failures
"""
"""Count one failure for each subject: in its current window, or the first of a new one."""

FORGET_FAILURES = """
DELETE FROM auth_failures
WHERE window_start <= %(now)s - %(window)s AND subject <> ALL(%(subjects)s::text[])
"""
"""Drop the counts whose window has passed (other than the subjects just counted)."""

SIGN_OUT = """
INSERT INTO portal_signouts (nonce, expires_at) VALUES (%(nonce)s, %(expires)s)
ON CONFLICT (nonce) DO NOTHING
"""
"""Record that the session with this nonce signed out."""

FORGET_SIGNOUTS = "DELETE FROM portal_signouts WHERE expires_at <= %(now)s"
"""Drop sign-outs of sessions that have expired anyway."""

SIGNED_OUT = "SELECT EXISTS (SELECT 1 FROM portal_signouts WHERE nonce = %s) AS gone"
"""Whether the session with this nonce signed out."""


@dataclass(frozen=True, slots=True)
class FailureCount:
    subject: str
    window_start: datetime
    failures: int


async def record_failures(
    conn: Conn, subjects: list[str], now: datetime, window: timedelta
) -> list[FailureCount]:
    """Count one failure for each of ``subjects``; each one's count in its window."""
    params = {"subjects": subjects, "now": now, "window": window}
    cur = await conn.execute(RECORD_FAILURES, params)
    counts = [FailureCount(**row) for row in await cur.fetchall()]
    await conn.execute(FORGET_FAILURES, params)
    return counts


async def sign_out(conn: Conn, nonce: str, expires_at: datetime, now: datetime) -> None:
    await conn.execute(FORGET_SIGNOUTS, {"now": now})
    await conn.execute(SIGN_OUT, {"nonce": nonce, "expires": expires_at})


async def signed_out(conn: Conn, nonce: str) -> bool:
    cur = await conn.execute(SIGNED_OUT, (nonce,))
    row = await cur.fetchone()
    return bool(row and row["gone"])
