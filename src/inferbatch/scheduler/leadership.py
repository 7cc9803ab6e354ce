"""One leader at a time: a session-level advisory lock on a dedicated connection.

If the leader's connection drops (crash, database restart), PostgreSQL releases the lock
and another scheduler takes over on its next try.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import psycopg
from psycopg import AsyncConnection

log = logging.getLogger(__name__)

LOCK_KEY = 0x1B_A7C4_5C4E  # "inferbatch scheduler"


class Leadership:
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
                log.info("became scheduler leader")
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
