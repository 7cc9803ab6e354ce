"""Settings, built once at process start and passed down.

Every setting comes from an ``INFERBATCH_``-prefixed environment variable (or the
defaults below). Nothing else in the package reads the environment.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from inferbatch.pricing import (
    DEFAULT_CURRENCY,
    DEFAULT_DEDICATED_PRICE,
    DEFAULT_SPOT_PRICE,
    GpuPrice,
    PriceTable,
    check_currency,
    load_model_prices,
)

if TYPE_CHECKING:
    from inferbatch.policy.escalation import EscalationConfig

DedupScope = Literal["user", "global", "off"]

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """Parse ``"30m"``, ``"24h"``, ``"7d"`` or ``"90s"`` into a timedelta.

    Raises ValueError for anything else (including a zero duration).
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r}: use a number and a unit s, m, h or d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return timedelta(seconds=seconds)


LOCATION_PATTERN = r"^[a-z0-9][a-z0-9.-]*$"
"""A location's name: a zone or region as clouds spell them (``us-east-1a``, ``europe-west4``)."""


class SpotLocation(BaseModel):
    """One location the escalate duty may place spot workers in (INFERBATCH_SPOT_LOCATIONS)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=LOCATION_PATTERN)
    spot_price_ratio: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Spot price here / dedicated price (default: "
        "the deployment's spot_price_ratio).",
    )
    boot_seconds: float = Field(
        default=240.0, ge=0, description="Seconds from asking for a spot worker here to it serving."
    )


class Settings(BaseSettings):
    """Configuration of every inferbatch role."""

    model_config = SettingsConfigDict(env_prefix="INFERBATCH_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL. Unset: an embedded PostgreSQL in data_dir/pg.",
    )
    database_session_url: str | None = Field(
        default=None,
        description="A direct, session-mode PostgreSQL URL for what needs a session: the "
        "scheduler's advisory-lock leadership (scheduler/leadership.py), workers' LISTEN for "
        "queue notifications, and migrations. Default: INFERBATCH_DATABASE_URL. Set it when "
        "INFERBATCH_DATABASE_URL goes through a transaction-mode pooler such as PgBouncer.",
    )
    database_pool_mode: Literal["session", "transaction"] = Field(
        default="session",
        description="How INFERBATCH_DATABASE_URL reaches PostgreSQL: session (a direct "
        "server, or a pooler that keeps one server connection per client connection) or "
        "transaction (PgBouncer pool_mode=transaction, or any pooler that may run each "
        "transaction on a different server connection). In transaction mode psycopg "
        "prepares no statements server-side and INFERBATCH_DATABASE_SESSION_URL is required.",
    )
    row_security: bool = Field(
        default=True,
        description="on: every transaction the API makes for a request runs as the role "
        "inferbatch_api with the request's project set, so PostgreSQL's row-level security "
        "hides other projects' rows even from a query that forgets its filter. off: the API "
        "acts as the connecting user and relies on its own filters (for measuring the cost).",
    )
    data_dir: Path = Field(
        default=Path(".inferbatch"), description="Embedded database and local blobs."
    )
    blob_dir: Path | None = Field(
        default=None,
        description="Where file contents live when blob_url is unset. Default: data_dir/blobs.",
    )
    blob_url: str | None = Field(
        default=None,
        description="Object storage for file contents, s3://BUCKET/PREFIX (AWS S3, MinIO, "
        "R2, Ceph, GCS interoperability); the way to run more than one api or scheduler "
        "replica without a shared volume. Endpoint, region and credentials are the AWS "
        "SDK's standard settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, workload identity). Unset: the local "
        "directory blob_dir.",
    )
    blob_region: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "blob_region", "INFERBATCH_BLOB_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"
        ),
        description="Region of the blob_url bucket; default AWS_REGION, then "
        "AWS_DEFAULT_REGION (MinIO and most other servers accept any).",
    )
    host: str = Field(default="127.0.0.1", description="API listen address.")
    port: int = Field(default=8000, description="API listen port.")
    api_key: str | None = Field(
        default=None, description="If set, this value is accepted as an admin API key."
    )
    public_url: str | None = Field(
        default=None, description="Base URL shown to users; default http://host:port."
    )
    session_secret: str | None = Field(
        default=None,
        description="Signs portal session cookies. Unset: a random secret kept in the "
        "database, so every api replica shares it. Set it (the same on every replica) to "
        "keep it out of the database; changing it signs everyone out.",
    )
    auth_failures_per_address: int = Field(
        default=20,
        ge=1,
        description="Failed authentications (API keys, portal sign-in) one client address "
        "may make per auth_failure_window_seconds; beyond, its requests are answered 429 "
        "with Retry-After until the window ends, before any key lookup.",
    )
    auth_failures_per_key_prefix: int = Field(
        default=10,
        ge=1,
        description="Failed authentications with keys that share their first 7 characters, "
        "per auth_failure_window_seconds, from any address.",
    )
    auth_failure_window_seconds: int = Field(default=60, ge=1)
    max_json_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Largest request body of the API's and portal's non-file routes (413 "
        "beyond, refused while it streams in); files, upload parts and Message Batches "
        "have their own limits.",
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        description="Largest total size of a request's header fields (431 beyond).",
    )

    oidc_issuer: str | None = Field(
        default=None,
        description="Single sign-on: the OpenID Connect provider's issuer URL (its "
        "configuration is read from {issuer}/.well-known/openid-configuration). Unset: no "
        "single sign-on; the portal signs in with API keys only.",
    )
    oidc_client_id: str | None = Field(
        default=None, description="The client id inferbatch is registered under at the provider."
    )
    oidc_client_secret: SecretStr | None = Field(
        default=None,
        description="The client's secret, for a confidential client; unset for a public "
        "client, which PKCE alone protects.",
    )
    oidc_audience: str | None = Field(
        default=None,
        description="The audience (aud) an access token sent to the API must name. "
        "Default: the client id.",
    )
    oidc_groups_claim: str = Field(
        default="groups",
        min_length=1,
        description="The ID-token and access-token claim that lists the user's groups.",
    )
    oidc_role_map: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description='Groups to project roles, as JSON: {"GROUP": {"PROJECT": "ROLE"}}, '
        "PROJECT a project id or name, ROLE owner, member or reader; "
        '{"GROUP": {"*": "admin"}} makes the group\'s users admins. A user in several '
        "groups gets the highest role each project is given.",
    )
    oidc_scopes: str = Field(
        default="openid profile email",
        description="The scopes the portal asks for (space-separated; openid is required).",
    )

    engine_url: str | None = Field(
        default=None,
        description="One OpenAI-compatible engine base URL for every model (several, "
        "comma-separated: replicas of one engine).",
    )
    engines: Path | None = Field(
        default=None, description="TOML or JSON file mapping model names to engines."
    )
    engine_max_in_flight: int = Field(
        default=32,
        ge=1,
        description="In-flight requests per engine replica when not configured: the "
        "ceiling of its adaptive limit.",
    )
    engine_concurrency: Literal["adaptive", "fixed"] = Field(
        default="adaptive",
        description="adaptive: each replica's in-flight limit follows its measured latency "
        "and overload answers, up to max_in_flight; fixed: always max_in_flight.",
    )
    engine_latency_tolerance: float = Field(
        default=2.0,
        gt=1.25,
        description="The adaptive limit's latency bound, a multiple of the unloaded latency.",
    )
    engine_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Per-request engine timeout."
    )

    max_file_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1,
        description="Largest file POST /v1/files accepts in one request (413 beyond); "
        "larger ones go through the Uploads API, in parts.",
    )
    max_upload_bytes: int = Field(
        default=8 * 1024**3,
        ge=1,
        description="Largest file the Uploads API (/v1/uploads) accepts: the bytes an "
        "upload declares, and all its parts together (OpenAI's limit, 8 GB). Each part "
        "is at most 64 MB.",
    )
    max_requests_per_batch: int = Field(default=50_000, ge=1)
    max_message_batch_requests: int = Field(
        default=100_000,
        ge=1,
        description="Most requests in one Anthropic Message Batch (POST "
        "/v1/messages/batches; Anthropic's limit, 100,000).",
    )
    max_message_batch_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1,
        description="Largest body POST /v1/messages/batches accepts (413 beyond; "
        "Anthropic's limit, 256 MB). The body is parsed in memory, so the api needs "
        "a few times this much memory per concurrent create.",
    )
    min_completion_window: str = Field(default="1m")
    max_completion_window: str = Field(default="30d")
    file_retention: str = Field(default="30d", description="Default expiry of batch files.")
    default_dedup_scope: DedupScope = "user"
    allow_global_dedup: bool = True
    dedup_horizon: str = Field(
        default="30d",
        description="Deduplication reuses outputs of requests that finished within this "
        "long (and whose rows are still retained).",
    )
    request_retention: str | None = Field(
        default=None,
        description="How long the request rows (bodies and results) of a finished batch "
        "are kept. Unset: as long as the batch's output file. The batch itself stays "
        "listed.",
    )
    audit_retention: str = Field(
        default="365d",
        description="How long audit log entries are kept; the scheduler's leader deletes "
        "older ones.",
    )

    webhook_allow_private: bool = Field(
        default=False,
        description="Let webhook endpoints and batch callback URLs reach hosts that resolve "
        "to loopback, link-local, private, unspecified, multicast or reserved addresses. "
        "Off: such URLs are refused on create and again when each delivery is sent (the "
        "name is resolved anew, so a changed DNS answer cannot redirect a delivery inside "
        "the network). Turn it on only where every such host may be called.",
    )

    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a worker may go without a heartbeat (it beats every third of "
        "this) before the leader sends the requests it holds back to the queue.",
    )
    max_attempts: int = Field(default=5, ge=1, description="Engine tries before failing.")
    retry_base_seconds: float = Field(default=1.0, gt=0)
    retry_max_seconds: float = Field(default=60.0, gt=0)
    dedicated_takes_spot: bool = Field(
        default=True, description="Dedicated workers run spot-pool work when otherwise idle."
    )
    fair_share: bool = Field(
        default=True,
        description="At equal priority, the spot pool's claim serves projects by weight (the "
        "one with the least requests claimed per weight first) instead of earliest deadline "
        "first; off: one order for every project. The dedicated pool keeps deadline order.",
    )
    drain_seconds: float = Field(default=25.0, ge=0, description="Grace period on SIGTERM.")
    location: str | None = Field(
        default=None,
        pattern=LOCATION_PATTERN,
        description="The zone or region this worker runs in (e.g. us-east-1a): shown on "
        "/v1/workers and in metrics, and it lets the worker claim requests whose batch "
        "restricts their locations (metadata.allowed_locations). Unset: none; such a worker "
        "runs only unrestricted requests.",
    )
    worker_poll_seconds: float = Field(default=0.5, gt=0, description="Max idle sleep.")
    result_flush_seconds: float = Field(default=0.05, gt=0)
    scheduler_tick_seconds: float = Field(default=1.0, gt=0)

    policy: str = Field(
        default="default",
        description="SLA escalation policy: default (deadline-aware), greedy, "
        "uniform-progress, spot-only or all-dedicated.",
    )
    escalate_after_interruptions: int = Field(
        default=2,
        ge=0,
        description="Move a request to dedicated after this many spot interruptions (0: never).",
    )
    escalate_on_retry: bool = Field(
        default=True, description="Retry a failed request on the dedicated pool."
    )
    max_dedicated_workers: int = Field(
        default=8, ge=0, description="Most dedicated workers the autoscaler may run."
    )
    dedicated_cold_start_seconds: float = Field(
        default=240.0, ge=0, description="Time for a new dedicated worker to serve."
    )
    service_seconds_prior: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request is assumed to hold an engine slot until 30 of its "
        "model have finished and been measured (the SLA policy's starting estimate).",
    )
    admission: Literal["reject", "warn", "off"] = Field(
        default="warn",
        description="What POST /v1/batches does with a batch estimated to miss its window "
        "even with the whole dedicated quota (policy/eta.py): reject (400 "
        "window_too_short, naming a window that would work), warn (accept it with a "
        "warning on the batch) or off (no estimate at create). An estimate made from the "
        "service_seconds_prior alone (nothing measured yet) only ever warns.",
    )
    spot_price_ratio: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Spot price over dedicated price per GPU-second (the policy's trade-off). "
        "Unset: gpu_hour_price_spot / gpu_hour_price_dedicated. Set alone, it sets the spot "
        "price (that ratio of the dedicated one); set with a price, they must agree.",
    )
    gpu_hour_price_spot: float = Field(
        default=DEFAULT_SPOT_PRICE,
        ge=0,
        description="What one GPU-hour on the spot pool costs, in `currency` (default 0.3 of "
        "the dedicated price, the policy's spot_price_ratio). Per model: INFERBATCH_PRICES.",
    )
    gpu_hour_price_dedicated: float = Field(
        default=DEFAULT_DEDICATED_PRICE,
        gt=0,
        description="What one GPU-hour on the dedicated pool costs, in `currency`.",
    )
    currency: str = Field(
        default=DEFAULT_CURRENCY,
        description="ISO 4217 code of the prices and of every cost amount.",
    )
    prices: Path | None = Field(
        default=None,
        description='TOML or JSON file of per-model GPU-hour prices: [models."<name>"] '
        "spot = .., dedicated = .. (a pool left out keeps the default price).",
    )
    _price_table: PriceTable | None = PrivateAttr(default=None)
    spot_interruption_notice_seconds: float = Field(
        default=120.0, ge=0, description="The cloud's notice before a spot reclaim."
    )
    spot_locations: list[SpotLocation] = Field(
        default_factory=list,
        description='Where spot workers can run, as JSON: [{"name": "us-east-1a", '
        '"spot_price_ratio": 0.3, "boot_seconds": 240}, ...]. The escalate duty then places '
        "the spot fleet across them (and any location a spot worker declares) and publishes "
        "the desired spot workers per location for one autoscaler each. Empty, with no "
        "located spot workers: one spot pool, scaled on its queue.",
    )
    max_spot_workers: int | None = Field(
        default=None,
        ge=0,
        description="Most spot workers the per-location autoscalers may run in all (unset: "
        "as many as the queued spot work can keep busy).",
    )
    dedicated_location: str | None = Field(
        default=None,
        pattern=LOCATION_PATTERN,
        description="Where dedicated workers run, for the per-location desired count "
        "(default: the first spot location).",
    )
    location_probe_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long a location found out of spot capacity is left alone before "
        "one spot worker is asked of it again.",
    )

    metrics_port: int | None = Field(
        default=None,
        description="Scheduler and worker: serve Prometheus /metrics on this port "
        "(the api serves /metrics on its own port).",
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text", description="text, or json: one JSON object per line."
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        low = parse_duration(self.min_completion_window)
        high = parse_duration(self.max_completion_window)
        if low > high:
            raise ValueError("min_completion_window exceeds max_completion_window")
        parse_duration(self.file_retention)
        parse_duration(self.dedup_horizon)
        parse_duration(self.audit_retention)
        if self.request_retention is not None:
            parse_duration(self.request_retention)
        from inferbatch.policy.escalation import policy_by_name

        policy_by_name(self.policy)  # raises ValueError for an unknown name
        if self.engine_url is not None and self.engines is not None:
            raise ValueError("set INFERBATCH_ENGINE_URL or INFERBATCH_ENGINES, not both")
        if self.blob_url is not None:
            from inferbatch.blobstore import parse_blob_url

            parse_blob_url(self.blob_url)  # raises ValueError for a malformed URL
            if self.blob_dir is not None:
                raise ValueError("set INFERBATCH_BLOB_URL or INFERBATCH_BLOB_DIR, not both")
        if self.database_session_url and not self.database_url:
            raise ValueError(
                "INFERBATCH_DATABASE_SESSION_URL needs INFERBATCH_DATABASE_URL (the embedded "
                "database has no pooler to bypass)"
            )
        if self.database_pool_mode == "transaction" and not self.database_session_url:
            raise ValueError(
                "INFERBATCH_DATABASE_POOL_MODE=transaction needs INFERBATCH_DATABASE_SESSION_URL: "
                "scheduler leadership and LISTEN need a session of their own"
            )
        self._check_oidc()
        names = [z.name for z in self.spot_locations]
        if len(set(names)) != len(names):
            raise ValueError("INFERBATCH_SPOT_LOCATIONS names a location twice")
        self._check_prices()
        return self

    def _check_oidc(self) -> None:
        if self.oidc_issuer is None:
            return
        if not self.oidc_issuer.startswith(("https://", "http://")):
            raise ValueError("INFERBATCH_OIDC_ISSUER must be an http(s) URL")
        if not self.oidc_client_id:
            raise ValueError("INFERBATCH_OIDC_ISSUER needs INFERBATCH_OIDC_CLIENT_ID")
        if "openid" not in self.oidc_scopes.split():
            raise ValueError("INFERBATCH_OIDC_SCOPES must include openid")
        from inferbatch.oidc import check_role_map

        check_role_map(self.oidc_role_map)  # raises ValueError naming the bad entry

    def _check_prices(self) -> None:
        """One price ratio for the policy and the bills: the policy plans with
        ``spot_price_ratio``, costs are the pool prices, and the two must say the same."""
        given = self.model_fields_set
        ratio_given = "spot_price_ratio" in given
        if ratio_given and "gpu_hour_price_spot" not in given:
            self.gpu_hour_price_spot = self.spot_price_ratio * self.gpu_hour_price_dedicated
        default = GpuPrice(self.gpu_hour_price_spot, self.gpu_hour_price_dedicated)
        default.check("INFERBATCH_GPU_HOUR_PRICE_SPOT/_DEDICATED")
        ratio = self.gpu_hour_price_spot / self.gpu_hour_price_dedicated
        if not ratio_given:
            if ratio <= 0:
                raise ValueError("INFERBATCH_GPU_HOUR_PRICE_SPOT must be above 0")
            self.spot_price_ratio = ratio
        elif not math.isclose(ratio, self.spot_price_ratio, rel_tol=1e-3):
            raise ValueError(
                f"INFERBATCH_SPOT_PRICE_RATIO ({self.spot_price_ratio}) disagrees with the "
                f"GPU-hour prices (spot {self.gpu_hour_price_spot} / dedicated "
                f"{self.gpu_hour_price_dedicated} = {ratio:.4g}): set one of them"
            )
        self.currency = check_currency(self.currency)
        models = load_model_prices(self.prices, default) if self.prices is not None else {}
        self._price_table = PriceTable(self.currency, default, MappingProxyType(models))

    @property
    def price_table(self) -> PriceTable:
        """The GPU prices in force (validated at start)."""
        assert self._price_table is not None
        return self._price_table

    @property
    def prepare_statements(self) -> bool:
        """Whether psycopg may prepare statements server-side on INFERBATCH_DATABASE_URL:
        not through a transaction-mode pooler, where the next execution of a prepared
        statement may reach a server connection that never saw it."""
        return self.database_pool_mode == "session"

    @property
    def oidc_token_audience(self) -> str | None:
        """The audience API access tokens must name: oidc_audience, else the client id."""
        return self.oidc_audience or self.oidc_client_id

    @property
    def blob_root(self) -> Path:
        return self.blob_dir if self.blob_dir is not None else self.data_dir / "blobs"

    @property
    def completion_window_bounds(self) -> tuple[timedelta, timedelta]:
        return parse_duration(self.min_completion_window), parse_duration(
            self.max_completion_window
        )

    @property
    def file_retention_delta(self) -> timedelta:
        return parse_duration(self.file_retention)

    @property
    def audit_retention_delta(self) -> timedelta:
        return parse_duration(self.audit_retention)

    @property
    def dedup_horizon_seconds(self) -> float:
        return parse_duration(self.dedup_horizon).total_seconds()

    @property
    def request_retention_delta(self) -> timedelta | None:
        """None: each batch's rows go when its output file expires."""
        if self.request_retention is None:
            return None
        return parse_duration(self.request_retention)

    @property
    def escalation(self) -> EscalationConfig:
        from inferbatch.policy.escalation import EscalationConfig

        return EscalationConfig(
            max_spot_interruptions=self.escalate_after_interruptions or None,
            max_failed_attempts=1 if self.escalate_on_retry else None,
        )
