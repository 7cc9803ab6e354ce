"""Prometheus metrics, one registry per process (never the global default registry).

The catalogue is ``docs/metrics.md``. Counters and histograms count what happens in the
process that exports them (sum them across instances); the system gauges describe the
whole system and are read from PostgreSQL when the api's ``/metrics`` is scraped, so any
api replica reports them (aggregate those with ``max``).

Labels take bounded values only: ``model`` passes the first :data:`MAX_MODEL_LABELS`
names a process sees and maps the rest to ``other``; ``priority`` is a class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inferbatch.db import counters, escalation, locations, webhooks, workers
from inferbatch.db import requests as queue
from inferbatch.db.requests import Tally
from inferbatch.db.types import Conn
from inferbatch.domain import BatchStatus
from inferbatch.policy.escalation import escalation_kind
from inferbatch.pricing import DEFAULT_PRICES, PriceTable

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DUTY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

MAX_MODEL_LABELS = 64
BATCH_STATUSES: tuple[str, ...] = get_args(BatchStatus)
PRIORITY_CLASSES = ("normal", "medium", "high")


def priority_class(priority: int) -> str:
    """The label for a batch priority: 1-4 normal, 5-9 medium, 10 and above high."""
    if priority >= 10:
        return "high"
    return "medium" if priority >= 5 else "normal"


class ModelLabels:
    """Bounds the ``model`` label: the first ``limit`` names pass, later ones are ``other``."""

    def __init__(self, limit: int = MAX_MODEL_LABELS) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, model: str) -> str:
        if model in self._seen:
            return model
        if len(self._seen) < self.limit:
            self._seen.add(model)
            return model
        return "other"


class RequestCounters:
    """Terminal request outcomes and tokens, shared by workers and the scheduler."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.model = ModelLabels()
        self.requests = Counter(
            "inferbatch_requests_total",
            "Requests that reached a terminal status.",
            ["status", "endpoint", "model", "pool"],
            registry=registry,
        )
        self.tokens = Counter(
            "inferbatch_tokens_total",
            "Tokens the engines reported, by direction (input, output).",
            ["direction", "model", "pool"],
            registry=registry,
        )
        self.escalations = Counter(
            "inferbatch_escalations_total",
            "Requests moved from the spot to the dedicated pool, by reason.",
            ["reason"],
            registry=registry,
        )
        self.interruptions = Counter(
            "inferbatch_spot_interruptions_total",
            "Spot work lost to an interruption: drain (SIGTERM), lease_lost (worker vanished).",
            ["source"],
            registry=registry,
        )
        for kind in ("deadline", "interruptions", "retry"):
            self.escalations.labels(kind)
        for source in ("drain", "lease_lost"):
            self.interruptions.labels(source)

    def finished(self, status: str, endpoint: str, model: str, pool: str, n: float = 1.0) -> None:
        self.requests.labels(status, endpoint, self.model(model), pool).inc(n)

    def escalated(self, by_reason: Mapping[str, int]) -> None:
        for reason, n in by_reason.items():
            self.escalations.labels(escalation_kind(reason)).inc(n)

    def tallied(self, status: str, tallies: Iterable[Tally]) -> None:
        for t in tallies:
            self.finished(status, t.endpoint, t.model, t.pool, t.n)


class WorkerMetrics(RequestCounters):
    """A worker's counters; GPU time is priced at ``prices`` (the settings' price table)."""

    def __init__(self, registry: CollectorRegistry, prices: PriceTable = DEFAULT_PRICES) -> None:
        super().__init__(registry)
        self.prices = prices
        self.gpu_seconds = Counter(
            "inferbatch_gpu_seconds",
            "GPU-seconds requests used (every written attempt, retried ones too), by the "
            "pool of the GPUs and model.",
            ["pool", "model"],
            registry=registry,
        )
        self.gpu_cost = Counter(
            "inferbatch_gpu_cost",
            "What that GPU time cost at the configured prices, in currency.",
            ["pool", "model", "currency"],
            registry=registry,
        )
        self.engine_requests = Counter(
            "inferbatch_engine_requests_total",
            "Engine calls started.",
            ["engine"],
            registry=registry,
        )
        self.engine_latency = Histogram(
            "inferbatch_engine_request_duration_seconds",
            "Time of engine calls that got an answer.",
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
        self.engine_limit = Gauge(
            "inferbatch_engine_concurrency_limit",
            "The in-flight limit of an engine replica now (adaptive, up to max_in_flight).",
            ["engine"],
            registry=registry,
        )
        self.busy = Counter(
            "inferbatch_worker_busy_seconds",
            "Engine time spent on requests (GPU-seconds of work), by pool.",
            ["pool"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "inferbatch_worker_in_flight",
            "Requests running now.",
            ["pool"],
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
        self.info = Gauge(
            "inferbatch_worker_info",
            "1, labelled with the worker's pool and location ('none': it declared none); "
            "join on instance to break the other worker series down by location.",
            ["pool", "location"],
            registry=registry,
        )

    def describe(self, pool: str, location: str | None) -> None:
        """Set :attr:`info` for this worker process."""
        self.info.labels(pool, location or locations.NO_LOCATION).set(1)

    def gpu(self, pool: str, model: str, seconds: float) -> None:
        """Count ``seconds`` of GPU time of ``model`` spent on ``pool`` and their cost."""
        label = self.model(model)
        self.gpu_seconds.labels(pool, label).inc(seconds)
        cost = self.prices.cost(pool, model, seconds)
        self.gpu_cost.labels(pool, label, self.prices.currency).inc(cost)


class SchedulerMetrics(RequestCounters):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.dedup_hits = Counter(
            "inferbatch_dedup_hits_total",
            "Requests completed from an identical request's output: reused, coalesced.",
            ["kind"],
            registry=registry,
        )
        self.dedup_tokens_saved = Counter(
            "inferbatch_dedup_tokens_saved_total",
            "Input and output tokens of outputs copied by deduplication.",
            registry=registry,
        )
        self.ingested_lines = Counter(
            "inferbatch_ingested_lines_total",
            "Input lines queued by ingest.",
            registry=registry,
        )
        self.ingest_batches = Counter(
            "inferbatch_ingest_batches_total",
            "Batches ingested, by outcome (queued, failed).",
            ["outcome"],
            registry=registry,
        )
        self.pruned_requests = Counter(
            "inferbatch_pruned_requests_total",
            "Request rows of finished batches deleted by retention.",
            registry=registry,
        )
        self.deadline_misses = Counter(
            "inferbatch_deadline_misses_total",
            "Batches that expired or finished after their deadline.",
            registry=registry,
        )
        self.batches_finished = Counter(
            "inferbatch_batches_finished_total",
            "Batches finalized, by status.",
            ["status"],
            registry=registry,
        )
        self.leader = Gauge(
            "inferbatch_scheduler_leader",
            "1 on the scheduler replica that holds leadership.",
            registry=registry,
        )
        self.duty_duration = Histogram(
            "inferbatch_scheduler_duty_duration_seconds",
            "Time of one run of a scheduler duty.",
            ["duty"],
            buckets=DUTY_BUCKETS,
            registry=registry,
        )
        self.duty_errors = Counter(
            "inferbatch_scheduler_duty_errors_total",
            "Duty runs that failed (and will be retried).",
            ["duty"],
            registry=registry,
        )
        self.webhook_attempts = Counter(
            "inferbatch_webhook_delivery_attempts_total",
            "Webhook delivery attempts by outcome: delivered, retry, failed (gave up).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("delivered", "retry", "failed"):
            self.webhook_attempts.labels(outcome)
        for kind in ("reused", "coalesced"):
            self.dedup_hits.labels(kind)
        for status in ("queued", "failed"):
            self.ingest_batches.labels(status)
        for status in ("completed", "expired", "cancelled"):
            self.batches_finished.labels(status)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "inferbatch_api_request_duration_seconds",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            buckets=API_BUCKETS,
            registry=registry,
        )


class SystemMetrics:
    """System-wide gauges refreshed from the database at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ready = Gauge(
            "inferbatch_ready",
            "1 when the api reaches PostgreSQL.",
            registry=registry,
        )
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
            "inferbatch_queue_depth",
            "Queued requests by pool and priority class.",
            ["pool", "priority"],
            registry=registry,
        )
        self.oldest_queued = Gauge(
            "inferbatch_queue_oldest_age_seconds",
            "Age of the oldest queued request's batch, by pool and priority class.",
            ["pool", "priority"],
            registry=registry,
        )
        self.at_risk = Gauge(
            "inferbatch_batches_at_risk",
            "In-progress batches the SLA policy expects to miss their deadline.",
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
        self.workers_by_location = Gauge(
            "inferbatch_workers_by_location",
            "Running workers by pool and location ('none': declared none).",
            ["pool", "location"],
            registry=registry,
        )
        self.desired_spot = Gauge(
            "inferbatch_desired_spot_workers",
            "Spot workers the SLA policy wants running in a location (for an autoscaler per "
            "node pool); no series until a policy that plans per location publishes them.",
            ["location"],
            registry=registry,
        )
        self.desired_dedicated = Gauge(
            "inferbatch_desired_dedicated_workers",
            "Dedicated workers the SLA policy wants running in a location; no series until a "
            "policy that plans per location publishes them.",
            ["location"],
            registry=registry,
        )
        self.location_capacity = Gauge(
            "inferbatch_spot_location_capacity",
            "Spot workers the escalate duty believes a location can host now, inferred from "
            "the workers asked for there and serving (the whole fleet: no shortage seen).",
            ["location"],
            registry=registry,
        )
        self.location_availability = Gauge(
            "inferbatch_spot_location_availability",
            "Smoothed share of recent time a location had spot capacity.",
            ["location"],
            registry=registry,
        )
        self.location_lifetime = Gauge(
            "inferbatch_spot_location_mean_lifetime_seconds",
            "Measured mean spot worker lifetime in a location (serving time over "
            "preemptions); no series before a preemption was seen there.",
            ["location"],
            registry=registry,
        )
        self.spot_enabled = Gauge(
            "inferbatch_spot_workers_enabled",
            "0 when the configured policy runs no spot workers (scale the spot pool to zero).",
            registry=registry,
        )
        self.ingested = Gauge(
            "inferbatch_ingested_requests",
            "Requests ingested from input files (all batches ever accepted).",
            registry=registry,
        )
        self.webhooks_pending = Gauge(
            "inferbatch_webhook_deliveries_pending",
            "Webhook deliveries not yet delivered or given up on.",
            registry=registry,
        )

    async def refresh(self, conn: Conn) -> None:
        for status in BATCH_STATUSES:
            self.batches.labels(status).set(0)
        by_status, ingested = await counters.batch_totals(conn)
        for status, n in by_status.items():
            self.batches.labels(status).set(n)
        self.requests.clear()
        depth = {(p, c): 0 for p in ("spot", "dedicated") for c in PRIORITY_CLASSES}
        oldest = dict.fromkeys(depth, 0.0)
        live: dict[tuple[str, str], int] = {}
        for row in await queue.queue_stats(conn):
            key = (row["status"], row["pool"])
            live[key] = live.get(key, 0) + row["n"]
            if row["status"] == "queued":
                where = (row["pool"], priority_class(row["priority"]))
                depth[where] += row["n"]
                oldest[where] = max(oldest[where], float(row["oldest_s"] or 0))
        for (status, pool), n in live.items():
            self.requests.labels(status, pool).set(n)
        for (pool, cls), n in depth.items():
            self.queue_depth.labels(pool, cls).set(n)
            self.oldest_queued.labels(pool, cls).set(oldest[pool, cls])
        for row in await counters.request_totals(conn):
            self.requests.labels(row["status"], row["pool"]).set(row["n"])
        self.ingested.set(ingested)
        self.webhooks_pending.set(await webhooks.pending_count(conn))
        state = await escalation.published_all(conn)
        self.dedicated_desired.set(float(state.get(escalation.DESIRED_DEDICATED, 0)))
        self.spot_enabled.set(float(state.get(escalation.SPOT_ENABLED, 1)))
        self.at_risk.set(float(state.get(escalation.BATCHES_AT_RISK, 0)))
        self.workers.clear()
        for row in await workers.live_by_pool(conn):
            self.workers.labels(row["pool"], row["state"]).set(row["n"])
        self.workers_by_location.clear()
        for pool, by_location in (await escalation.live_workers_by_location(conn)).items():
            for location, n in by_location.items():
                self.workers_by_location.labels(pool, location or locations.NO_LOCATION).set(n)
        for gauge, published_key in (
            (self.desired_spot, locations.DESIRED_SPOT_BY_LOCATION),
            (self.desired_dedicated, locations.DESIRED_DEDICATED_BY_LOCATION),
        ):
            gauge.clear()
            for location, n in (state.get(published_key) or {}).items():
                gauge.labels(location).set(float(n))
        beliefs = state.get(locations.SPOT_LOCATIONS) or {}
        for gauge in (self.location_capacity, self.location_availability, self.location_lifetime):
            gauge.clear()
        for location, belief in beliefs.items():
            self.location_capacity.labels(location).set(float(belief["capacity"]))
            self.location_availability.labels(location).set(float(belief["availability"]))
            if belief.get("mean_lifetime_s") is not None:
                self.location_lifetime.labels(location).set(float(belief["mean_lifetime_s"]))
