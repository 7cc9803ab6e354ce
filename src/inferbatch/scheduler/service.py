"""The scheduler process: small named duties, each with its own loop, run by the leader
(deliver runs on every replica).

- ingest: validate and queue new batches;
- cancel: cancel the queued requests of cancelling batches;
- rescue: mark silent workers lost and re-queue the requests of workers not live;
- follow: settle requests that wait for an identical one (deduplication);
- escalate: run the SLA policy, move requests from spot to dedicated, publish the
  desired dedicated worker count;
- progress: fold the counts of requests settled since the last fold into the batches;
- finalize: write output files and finish batches (completed, expired, cancelled);
- retain: prune the request rows of finished batches past their retention, in steps;
- clean: delete files past their expiry, forget workers stopped a week ago and idempotency
  keys past their day;
- uploads: expire uploads past their hour, delete the part blobs of finished ones;
- audit: delete audit log entries past their retention, in steps;
- deliver: send due webhook deliveries (every replica: claims are leased, not led).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import psycopg
from prometheus_client import CollectorRegistry

from inferbatch.blobstore import BlobStore
from inferbatch.config import Settings
from inferbatch.db import audit, counters, dedup, files, idempotency, retention, workers
from inferbatch.db import requests as queue
from inferbatch.db.types import Pool
from inferbatch.errors import StorageUnavailable
from inferbatch.metrics import SchedulerMetrics
from inferbatch.policy.escalation import escalate_request, policy_by_name
from inferbatch.scheduler.deliver import Deliverer
from inferbatch.scheduler.escalate import EscalationLoop
from inferbatch.scheduler.finalize import finish_ready
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.scheduler.leadership import Leadership
from inferbatch.services import upload_sessions

log = logging.getLogger(__name__)

WORKER_MEMORY_SECONDS = 7 * 86400.0
"""How long stopped and lost workers stay listed (``GET /v1/workers``, the portal)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        blobs: BlobStore,
        leadership: Leadership,
        now: Callable[[], datetime] = utcnow,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.blobs = blobs
        self.leadership = leadership
        self.now = now
        self.metrics = metrics or SchedulerMetrics(CollectorRegistry())
        self.policy = policy_by_name(settings.policy, settings.escalation)
        self.escalation = self.policy.escalation
        self.escalator = EscalationLoop(settings, pool, self.policy, self.metrics)
        self.deliverer = Deliverer(
            pool, allow_private=settings.webhook_allow_private, now=now, metrics=self.metrics
        )

    async def ingest(self) -> bool:
        batch_id = await ingest_next(
            self.pool,
            self.blobs,
            max_requests=self.settings.max_requests_per_batch,
            max_message_requests=self.settings.max_message_batch_requests,
            now=self.now,
            dedup_horizon_seconds=self.settings.dedup_horizon_seconds,
            metrics=self.metrics,
        )
        return batch_id is not None

    async def cancel(self) -> bool:
        async with self.pool.connection() as conn:
            cancelled = await queue.cancel_queued(conn)
        self.metrics.tallied("cancelled", cancelled)
        return bool(cancelled)

    async def rescue(self) -> bool:
        """Mark silent workers lost and send the requests of workers that are not live back
        to the queue (on spot, that counts as an interruption)."""
        stale = self.settings.lease_seconds
        async with self.pool.connection() as conn:
            await workers.mark_lost(conn, stale_seconds=stale)
            lost = await queue.lost_claims(conn, stale_seconds=stale)
            rows = [
                queue.Requeue(
                    c.request_id,
                    attempt=c.attempt,
                    owner=c.owner,
                    interrupted=c.pool == "spot",
                    escalate=escalate_request(
                        c.interruptions + 1, c.failed_attempts, self.escalation
                    )
                    if c.pool == "spot"
                    else None,
                )
                for c in lost
            ]
            done = await queue.requeue(conn, ("running",), rows)
        self.metrics.escalated(done.escalated)
        lost_on_spot = sum(1 for c in lost if c.pool == "spot" and c.request_id in done.ids)
        if lost_on_spot:
            self.metrics.interruptions.labels("lease_lost").inc(lost_on_spot)
        if done.n:
            owners = sorted({c.owner or "none" for c in lost if c.request_id in done.ids})
            log.warning("re-queued %d requests of workers not live (%s)", done.n, owners)
        return len(lost) >= 5000

    async def escalate(self) -> bool:
        await self.escalator.tick()
        return False

    async def follow(self) -> bool:
        async with self.pool.connection() as conn:
            done, requeued = await dedup.settle_followers(conn)
        self.metrics.tallied("deduplicated", done)
        self.metrics.dedup_hits.labels("coalesced").inc(queue.total(done))
        self.metrics.dedup_tokens_saved.inc(sum(t.tokens for t in done))
        return bool(done) or requeued > 0

    async def progress(self) -> bool:
        """Fold the request deltas written since the last fold into the batch counters."""
        async with self.pool.connection() as conn:
            pending = await counters.pending_batches(conn, limit=1000)
            await counters.fold(conn, pending, self.settings.price_table)
            await counters.fold_batch_totals(conn)
            await counters.fold_usage(conn)
        return len(pending) >= 1000

    async def finalize(self) -> bool:
        n = await finish_ready(
            self.pool,
            self.blobs,
            retention=self.settings.file_retention_delta,
            now=self.now,
            request_retention=self.settings.request_retention_delta,
            metrics=self.metrics,
            prices=self.settings.price_table,
        )
        return n > 0

    async def retain(self) -> bool:
        """Prune the request rows of one finished batch past its retention, one bounded
        step (one transaction) per call; at once again while more is due."""
        async with self.pool.connection() as conn:
            step = await retention.prune_step(conn, self.now())
        if step.batch_id is not None:
            self.metrics.pruned_requests.inc(step.requests)
            if step.finished:
                log.info(
                    "batch %s: request rows pruned",
                    step.batch_id,
                    extra={"batch_id": step.batch_id},
                )
        return step.batch_id is not None

    async def clean(self) -> bool:
        """Delete expired files, bytes first and then the row of each: while the blob
        store is down the rows stay, and the next run tries again (the other order would
        leave bytes that no row points to)."""
        async with self.pool.connection() as conn:
            expired = await files.expired(conn, self.now(), 500)
            await workers.prune(conn, WORKER_MEMORY_SECONDS)
            await idempotency.forget_expired(conn, self.now())
        gone: list[str] = []
        try:
            for record in expired:
                await asyncio.to_thread(self.blobs.delete, record.blob_key)
                gone.append(record.id)
        finally:
            if gone:
                async with self.pool.connection() as conn:
                    await files.delete_many(conn, gone)
        return len(expired) == 500

    async def uploads(self) -> bool:
        """Expire uploads past their hour and delete the part blobs of finished ones
        (see services/upload_sessions.py); while the blob store is down the rows stay and
        the next run tries again."""
        return await upload_sessions.sweep(self.pool, self.blobs, self.now())

    async def audit(self) -> bool:
        """Delete audit log entries older than their retention, one bounded step (one
        transaction) per call; at once again while more is due."""
        async with self.pool.connection() as conn:
            deleted = await audit.purge_step(conn, self.now() - self.settings.audit_retention_delta)
        if deleted:
            log.info("deleted %d audit log entries past their retention", deleted)
        return deleted == audit.PURGE_STEP

    async def deliver(self) -> bool:
        """Send the webhook deliveries that are due (see scheduler/deliver.py)."""
        return await self.deliverer.tick()

    async def _loop(
        self,
        name: str,
        duty: Callable[[], Awaitable[bool]],
        every: float,
        leader_only: bool = True,
    ) -> None:
        """Run ``duty`` while leader (always, unless ``leader_only``); again at once when it
        reports more work."""
        failures = 0
        while True:
            more = False
            if self.leadership.is_leader or not leader_only:
                started = time.monotonic()
                try:
                    more = await duty()
                    failures = 0
                except (psycopg.Error, OSError, StorageUnavailable) as exc:
                    failures += 1
                    self.metrics.duty_errors.labels(name).inc()
                    log.warning("%s failed (%s); retrying", name, exc, extra={"duty": name})
                    await asyncio.sleep(min(30.0, every * 2**failures))
                except Exception:
                    failures += 1
                    self.metrics.duty_errors.labels(name).inc()
                    log.exception("%s failed; retrying", name, extra={"duty": name})
                    await asyncio.sleep(min(30.0, every * 2**failures))
                self.metrics.duty_duration.labels(name).observe(time.monotonic() - started)
            if not more:
                await asyncio.sleep(every)

    async def _lead(self, every: float) -> None:
        while True:
            await self.leadership.refresh()
            self.metrics.leader.set(1 if self.leadership.is_leader else 0)
            await asyncio.sleep(every)

    async def run(self, stop: asyncio.Event) -> None:
        tick = self.settings.scheduler_tick_seconds
        await self.leadership.refresh()
        duties: list[tuple[str, Callable[[], Awaitable[bool]], float]] = [
            ("ingest", self.ingest, tick / 2),
            ("cancel", self.cancel, tick),
            ("rescue", self.rescue, tick),
            ("follow", self.follow, tick / 2),
            ("escalate", self.escalate, tick),
            ("progress", self.progress, tick),
            ("finalize", self.finalize, tick),
            ("clean", self.clean, 60.0),
            ("retain", self.retain, 30.0),
            ("uploads", self.uploads, 30.0),
            ("audit", self.audit, 60.0),
        ]
        for name, _, _ in duties:
            self.metrics.duty_errors.labels(name)
        self.metrics.duty_errors.labels("deliver")
        tasks = [asyncio.create_task(self._lead(tick), name="leadership")]
        tasks += [asyncio.create_task(self._loop(n, d, e), name=n) for n, d, e in duties]
        tasks.append(
            asyncio.create_task(
                self._loop("deliver", self.deliver, tick, leader_only=False), name="deliver"
            )
        )
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.deliverer.aclose()
            await self.leadership.release()
