"""Prometheus metrics, one registry per process (never the global default registry).

Gauges that describe the whole system (batches by status, queue depth, live workers)
are read from PostgreSQL when ``/metrics`` is scraped, so any api replica reports them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inferbatch.db import batches, escalation, workers
from inferbatch.db import requests as queue
from inferbatch.db.types import Conn

DESIRED_DEDICATED = "dedicated_workers_desired"

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.engine_latency = Histogram(
            "inferbatch_engine_request_duration_seconds",
            "Engine request latency.",
            ["engine"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.engine_errors = Counter(
            "inferbatch_engine_errors_total",
            "Engine answers that were not 2xx, and transport errors, by kind.",
            ["engine", "kind"],
            registry=registry,
        )
        self.engine_up = Gauge(
            "inferbatch_engine_up",
            "1 while the engine answers, 0 after a connection to it failed.",
            ["engine"],
            registry=registry,
        )
        self.claimed = Counter(
            "inferbatch_worker_claimed_total", "Requests claimed.", registry=registry
        )
        self.outcomes = Counter(
            "inferbatch_worker_outcomes_total",
            "Results written, by pool and outcome (completed, failed, retry).",
            ["pool", "outcome"],
            registry=registry,
        )
        self.fenced = Counter(
            "inferbatch_worker_fenced_writes_total",
            "Results refused because the lease had moved on.",
            registry=registry,
        )


class SystemMetrics:
    """System-wide gauges refreshed from the database at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Gauge(
            "inferbatch_batches", "Batches by status.", ["status"], registry=registry
        )
        self.requests = Gauge(
            "inferbatch_requests",
            "Requests by status and pool.",
            ["status", "pool"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "inferbatch_queue_depth", "Queued requests by pool.", ["pool"], registry=registry
        )
        self.oldest_queued = Gauge(
            "inferbatch_queue_oldest_age_seconds",
            "Age of the oldest queued request's batch, by pool.",
            ["pool"],
            registry=registry,
        )
        self.workers = Gauge(
            "inferbatch_workers",
            "Live workers by pool and state.",
            ["pool", "state"],
            registry=registry,
        )
        self.dedicated_desired = Gauge(
            "inferbatch_dedicated_workers_desired",
            "Dedicated workers the SLA policy wants running (for an autoscaler).",
            registry=registry,
        )
        self.ingested = Gauge(
            "inferbatch_ingested_requests",
            "Requests ingested from input files (all batches ever accepted).",
            registry=registry,
        )

    async def refresh(self, conn: Conn) -> None:
        for status in (
            "validating",
            "failed",
            "in_progress",
            "finalizing",
            "completed",
            "expired",
            "cancelling",
            "cancelled",
        ):
            self.batches.labels(status).set(0)
        for status, n in (await batches.status_counts(conn)).items():
            self.batches.labels(status).set(n)
        self.requests.clear()
        for pool in ("spot", "dedicated"):
            self.queue_depth.labels(pool).set(0)
            self.oldest_queued.labels(pool).set(0)
        for row in await queue.queue_stats(conn) + await queue.settled_stats(conn):
            self.requests.labels(row["status"], row["pool"]).set(row["n"])
            if row["status"] == "queued":
                self.queue_depth.labels(row["pool"]).set(row["n"])
                self.oldest_queued.labels(row["pool"]).set(float(row["oldest_s"] or 0))
        self.ingested.set(await batches.ingested_total(conn))
        desired = await escalation.published(conn, DESIRED_DEDICATED)
        self.dedicated_desired.set(float(desired) if desired is not None else 0.0)
        self.workers.clear()
        for row in await workers.live_by_pool(conn):
            self.workers.labels(row["pool"], row["state"]).set(row["n"])
