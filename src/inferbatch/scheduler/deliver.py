"""The delivery duty: send due webhook deliveries from the outbox, at least once.

It runs on every scheduler replica, not only the leader: each claim leases rows with
``FOR UPDATE SKIP LOCKED`` (see :mod:`inferbatch.db.webhooks`), so replicas share the work
and one that dies mid-send leaves its rows due again when their lease ends.

Each attempt POSTs the event's stored body with the Standard Webhooks headers:
``webhook-id`` is the event id (the same on every attempt, so receivers can drop
duplicates), ``webhook-timestamp`` the wall-clock time of this attempt (receivers compare it
with their own clock) and ``webhook-signature`` signs both with the body. A 2xx answer
delivers it. Anything else (another status, a redirect, which is never followed, no answer
within :data:`TIMEOUT_SECONDS`, a refused address) is retried after :data:`RETRY_SCHEDULE`,
Standard Webhooks' schedule: eight attempts over about 27 hours, then ``failed``.

Unless ``webhook_allow_private``, the host is resolved anew for each connection and the
connection goes only to addresses that were just checked (:class:`CheckedResolver`): a DNS
answer that changed since the URL was registered cannot turn a delivery inward.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from inferbatch import __version__
from inferbatch.db import webhooks as rows
from inferbatch.db.types import Pool
from inferbatch.db.webhooks import Attempt
from inferbatch.domain import ClaimedDelivery
from inferbatch.ids import new_id
from inferbatch.metrics import SchedulerMetrics
from inferbatch.services.webhooks import (
    DISABLED_ERROR,
    literal_address,
    public_addresses,
    refused_address,
    signed_headers,
)

log = logging.getLogger(__name__)

RETRY_SCHEDULE = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
"""The wait after each failed attempt (the first is sent at once): 27 h 35 m in all."""
TIMEOUT_SECONDS = 10.0
"""The whole of one attempt: connecting, sending and reading the answer's status."""
LEASE_SECONDS = 60.0
"""How long a claim holds a delivery: well over one attempt, so a live duty never loses it."""
CLAIM_SIZE = 32
"""Deliveries claimed, and sent concurrently, per tick."""
MAX_ERROR_CHARS = 300
"""How much of a failed answer's body is kept as its ``last_error``."""


def next_delay(attempts: int) -> timedelta | None:
    """The wait before the next attempt after ``attempts`` failed ones; None: give up."""
    if attempts < 1:
        raise ValueError("attempts counts from 1")
    return RETRY_SCHEDULE[attempts - 1] if attempts <= len(RETRY_SCHEDULE) else None


class CheckedResolver(AbstractResolver):
    """Resolves names for the HTTP client and returns only addresses that pass
    :func:`~inferbatch.services.webhooks.refused_address`: a name with any other is
    refused whole (``PermissionError``, which the client reports as a connection error)."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = literal_address(result["host"].split("%", 1)[0])
            why = refused_address(address) if address is not None else "not an IP address"
            if why is not None:
                raise PermissionError(f"{host}: {why}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"No answer within {TIMEOUT_SECONDS:g} s."
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, PermissionError):
        return f"Refused: {exc.os_error}. Webhooks go to public addresses only."
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"Could not connect: {exc.os_error or exc}."
    text = str(exc) or type(exc).__name__
    return text[:MAX_ERROR_CHARS]


class Deliverer:
    """Claims due deliveries, sends them and records each attempt (one per tick call)."""

    def __init__(
        self,
        pool: Pool,
        *,
        allow_private: bool,
        now: Callable[[], datetime],
        metrics: SchedulerMetrics | None = None,
        owner: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.allow_private = allow_private
        self.now = now
        self.metrics = metrics
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{new_id('', 6)}"
        self.wall_clock = wall_clock
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                # every new connection resolves (and so checks) the name again
                use_dns_cache=False,
                resolver=None if self.allow_private else CheckedResolver(),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
                headers={"user-agent": f"inferbatch-webhooks/{__version__}"},
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def tick(self) -> bool:
        """Send what is due now; True when a full claim came back (more may be due)."""
        async with self.pool.connection() as conn, conn.transaction():
            claimed = await rows.claim(
                conn, owner=self.owner, n=CLAIM_SIZE, now=self.now(), lease_seconds=LEASE_SECONDS
            )
        if claimed:
            await asyncio.gather(*(self._deliver(d) for d in claimed))
        return len(claimed) == CLAIM_SIZE

    async def _deliver(self, d: ClaimedDelivery) -> None:
        status, error = await self.attempt(d)
        if status is not None and 200 <= status < 300:
            result = Attempt(d.id, d.attempt, "delivered", response_status=status)
        else:
            final = not d.enabled or d.url is None
            delay = None if final else next_delay(d.attempt)
            result = Attempt(
                d.id,
                d.attempt,
                "failed" if delay is None else "retry",
                response_status=status,
                error=error,
                next_attempt_at=self.now() + delay if delay is not None else None,
            )
        async with self.pool.connection() as conn, conn.transaction():
            recorded = await rows.record_attempt(conn, self.owner, result, self.now())
        if not recorded:
            log.info("webhook delivery %d: attempt %d no longer ours", d.id, d.attempt)
            return
        if self.metrics is not None:
            self.metrics.webhook_attempts.labels(result.outcome).inc()
        if result.outcome == "failed":
            log.warning(
                "webhook delivery %d (event %s) failed after %d attempts: %s",
                d.id,
                d.event_id,
                d.attempt,
                error,
                extra={"event_id": d.event_id},
            )

    async def attempt(self, d: ClaimedDelivery) -> tuple[int | None, str | None]:
        """Send one attempt: (HTTP status or None, error or None)."""
        if not d.enabled:
            return None, DISABLED_ERROR
        if d.url is None or d.secret is None:
            return None, "The delivery has no URL to go to."
        try:
            host = urlsplit(d.url).hostname or ""
            if not self.allow_private and literal_address(host) is not None:
                # the client does not resolve an address, so check it here
                await public_addresses(host, 0)
            headers = signed_headers(d.secret, d.event_id, int(self.wall_clock()), d.payload)
            headers["content-type"] = "application/json"
            async with self._client().post(
                d.url, data=d.payload.encode(), headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return response.status, None
                body = await response.content.read(MAX_ERROR_CHARS)
                text = body.decode("utf-8", "replace").strip()
                return response.status, f"HTTP {response.status}" + (f": {text}" if text else "")
        except PermissionError as exc:
            return None, f"Refused: {exc}. Webhooks go to public addresses only."
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return None, _describe(exc)
