"""One leader at a time: a session-level advisory lock on a dedicated connection.

If the leader's connection drops (crash, database restart), PostgreSQL releases the lock
and another scheduler takes over on its next try.

The connection must be a session of its own: the session URL
(``INFERBATCH_DATABASE_SESSION_URL``), never a transaction-mode pooler. Through one, the
lock would stay on a pooled server connection that other clients go on using: it would
outlive a crashed leader, and a second scheduler handed that server connection would
"take" it too (advisory locks are re-entrant within a session): two leaders.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import psycopg
from psycopg import AsyncConnection

log = logging.getLogger(__name__)

LOCK_KEY = 0x1B_A7C4_5C4E  # "inferbatch scheduler"

WHO_LEADS = """
SELECT l.pid, a.client_addr::text AS client_addr, a.client_port, a.application_name
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
"""
"""The server backend holding the leader lock in this database, if any (pass LOCK_KEY). The
leading scheduler logs that pid when it takes the lead; the client address and port name
its connection."""


class Leadership:
    """Leadership of one scheduler process; ``url`` is the session URL (see above)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: AsyncConnection[Any] | None = None

    @property
    def is_leader(self) -> bool:
        return self._conn is not None

    async def refresh(self) -> bool:
        """Confirm or try to take leadership; never raises for database errors."""
        try:
            if self._conn is not None:
                await self._conn.execute("SELECT 1")
                return True
            conn = await AsyncConnection.connect(
                self._url, autocommit=True, application_name="inferbatch-leader"
            )
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
            row = await cur.fetchone()
            if row is not None and row[0]:
                self._conn = conn
                # the backend pid ties this process to the lock holder in pg_locks (WHO_LEADS)
                log.info("became scheduler leader (database backend pid %d)", conn.info.backend_pid)
                return True
            await conn.close()
            return False
        except psycopg.Error as exc:
            if self._conn is not None:
                log.warning("lost scheduler leadership: %s", exc)
            await self.release()
            return False

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
