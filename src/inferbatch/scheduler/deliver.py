"""The delivery duty: send due webhook deliveries from the outbox, at least once.

It runs on every scheduler replica, not only the leader: each claim leases rows with
``FOR UPDATE SKIP LOCKED`` (see :mod:`inferbatch.db.webhooks`), so replicas share the work
and one that dies mid-send leaves its rows due again when their lease ends.

Each attempt POSTs the event's stored body with the Standard Webhooks headers:
``webhook-id`` is the event id (the same on every attempt, so receivers can drop
duplicates), ``webhook-timestamp`` the wall-clock time of this attempt (receivers compare it
with their own clock) and ``webhook-signature`` signs both with the body, under the
endpoint's secret and, for 24 hours after a rotation that kept it, the one before. A 2xx
answer delivers it. Anything else (another status, a redirect, which is never followed, no
answer within :data:`~inferbatch.services.webhook_send.TIMEOUT_SECONDS`, a refused address) is
retried after :data:`RETRY_SCHEDULE`, Standard Webhooks' schedule: eight attempts over about
27 hours, then ``failed``.

Unless ``webhook_allow_private``, each connection goes only to addresses that were just
checked (see :mod:`inferbatch.services.webhook_send`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from inferbatch.db import webhooks as rows
from inferbatch.db.types import Pool
from inferbatch.db.webhooks import Attempt
from inferbatch.domain import ClaimedDelivery
from inferbatch.ids import new_id
from inferbatch.metrics import SchedulerMetrics
from inferbatch.services.webhook_send import Sender, Sent

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
LEASE_SECONDS = 60.0
"""How long a claim holds a delivery: well over one attempt
(:data:`~inferbatch.services.webhook_send.TIMEOUT_SECONDS`), so a live duty never loses it."""
CLAIM_SIZE = 32
"""Deliveries claimed, and sent concurrently, per tick."""
NO_TARGET = "The delivery has no URL to go to."


def next_delay(attempts: int) -> timedelta | None:
    """The wait before the next attempt after ``attempts`` failed ones; None: give up."""
    if attempts < 1:
        raise ValueError("attempts counts from 1")
    return RETRY_SCHEDULE[attempts - 1] if attempts <= len(RETRY_SCHEDULE) else None


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
        self.now = now
        self.metrics = metrics
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{new_id('', 6)}"
        self.sender = Sender(allow_private=allow_private, wall_clock=wall_clock)

    async def aclose(self) -> None:
        await self.sender.aclose()

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
        sent = await self.attempt(d)
        if sent.delivered:
            result = Attempt(d.id, d.attempt, "delivered", response_status=sent.status)
        else:
            delay = None if d.url is None or not d.secrets else next_delay(d.attempt)
            result = Attempt(
                d.id,
                d.attempt,
                "failed" if delay is None else "retry",
                response_status=sent.status,
                error=sent.error,
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
                sent.error,
                extra={"event_id": d.event_id},
            )

    async def attempt(self, d: ClaimedDelivery) -> Sent:
        """Send one attempt, signed with every secret active now."""
        if d.url is None or not d.secrets:
            return Sent(None, NO_TARGET)
        return await self.sender.send(d.url, d.secrets, d.event_id, d.payload)
