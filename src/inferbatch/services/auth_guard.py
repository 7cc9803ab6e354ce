"""Rate limiting of failed authentication, per client address and per key prefix.

Every failure (an unknown, revoked or expired API key, on the API or at portal sign-in)
is counted in the database, per address and per the presented key's first 7 characters
(the stored ``prefix``), so the counts are shared by every api replica. When a count
reaches its limit, the replica that counted it remembers the subject as blocked until the
window ends, and refuses it from memory (429 with ``Retry-After``) before looking up any
key. Another replica learns of the block on the subject's next failure there. Successful
authentication costs two dictionary lookups and no query.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from math import ceil

from inferbatch.config import Settings
from inferbatch.db import auth_guard as rows
from inferbatch.db.types import Conn
from inferbatch.errors import TooManyFailures

PREFIX_LENGTH = 7
"""How much of a presented key names its prefix (as ``api_keys.prefix`` stores it)."""


def subjects(address: str | None, key: str) -> list[str]:
    """The subjects a failure with ``key`` from ``address`` counts against."""
    found = [f"prefix:{key[:PREFIX_LENGTH]}"]
    if address:
        found.insert(0, f"address:{address}")
    return found


class AuthGuard:
    """One api process's view of which subjects are blocked, and the limits."""

    def __init__(self, settings: Settings, now: Callable[[], datetime]) -> None:
        self._window = timedelta(seconds=settings.auth_failure_window_seconds)
        self._limits = {
            "address": settings.auth_failures_per_address,
            "prefix": settings.auth_failures_per_key_prefix,
        }
        self._now = now
        self._blocked: dict[str, datetime] = {}

    def check(self, address: str | None, key: str) -> None:
        """TooManyFailures while the address or the key's prefix is blocked."""
        now = self._now()
        until = [t for s in subjects(address, key) if (t := self._blocked.get(s)) and t > now]
        if until:
            raise TooManyFailures(retry_after=ceil((max(until) - now).total_seconds()))

    async def failed(self, conn: Conn, address: str | None, key: str) -> None:
        """Count a failed authentication; block the subjects whose count reached its
        limit until their window ends."""
        now = self._now()
        counts = await rows.record_failures(conn, subjects(address, key), now, self._window)
        self._blocked = {s: t for s, t in self._blocked.items() if t > now}
        for count in counts:
            kind = count.subject.partition(":")[0]
            if count.failures >= self._limits[kind]:
                self._blocked[count.subject] = count.window_start + self._window
