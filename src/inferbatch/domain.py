"""Domain objects: frozen dataclasses converted from rows at the data-access edge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
RequestStatus = Literal[
    "queued", "running", "waiting", "completed", "failed", "cancelled", "expired"
]
"""``waiting``: follows an identical request that is queued or running (deduplication)."""
Pool = Literal["spot", "dedicated"]

ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/moderations",
)
"""The endpoints a batch may name (OpenAI's batch endpoints an engine can serve)."""
MESSAGES_ENDPOINT = "/v1/messages"
"""The endpoint of Anthropic Message Batches (``/v1/messages/batches``): their requests are
Messages API calls. Not one of :data:`ENDPOINTS`: an OpenAI batch cannot name it."""
TERMINAL_BATCH_STATUSES = frozenset({"failed", "completed", "expired", "cancelled"})


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    is_admin: bool


Role = Literal["owner", "member", "reader"]
"""A role in a project: owners and members may change its objects, readers only read them
(owners also manage the project's users and keys)."""
ROLES: tuple[Role, ...] = ("owner", "member", "reader")
DEFAULT_PROJECT_ID = "proj_default"
"""The project everything made before projects belongs to, and where keys made without
naming one (``inferbatch up``, ``INFERBATCH_API_KEY``, ``inferbatch key``) land."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: what its API key resolved to. ``id`` is the user's or the
    service account's id, written as ``owner_id`` on what it makes; ``project_id`` is the
    key's project, which scopes everything it sees and makes (admins see every project)."""

    id: str
    name: str
    is_admin: bool
    project_id: str = DEFAULT_PROJECT_ID
    role: Role = "owner"
    key_id: str | None = None
    service_account: bool = False
    """True when ``id`` is a service account's (then no user is behind the key)."""

    @classmethod
    def of_user(
        cls,
        user: User,
        project_id: str = DEFAULT_PROJECT_ID,
        role: Role = "owner",
        key_id: str | None = None,
    ) -> Principal:
        return cls(user.id, user.name, user.is_admin, project_id, role, key_id)


def project_filter(principal: Principal) -> str | None:
    """The project id a query of objects filters by: None (every project) for admins. The
    one visibility rule: an object outside it answers as if it did not exist."""
    return None if principal.is_admin else principal.project_id


def may_change(principal: Principal) -> bool:
    """Whether the principal may create, cancel, retry or delete objects of its project:
    admins, owners and members; not readers. The one role rule of the object routes."""
    return principal.is_admin or principal.role != "reader"


def may_manage(principal: Principal, project_id: str) -> bool:
    """Whether the principal may manage ``project_id``'s users, keys and service accounts:
    admins, and the project's owners (through a key of that project)."""
    return principal.is_admin or (principal.project_id == project_id and principal.role == "owner")


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    owner_id: str
    purpose: str
    filename: str
    bytes: int
    sha256: str
    blob_key: str
    created_at: datetime
    expires_at: datetime | None
    line_count: int | None = None
    """Lines counted at upload (blank ones too); None when not counted."""
    project_id: str = DEFAULT_PROJECT_ID
    token_estimate: int | None = None
    """Tokens estimated at upload (:mod:`inferbatch.services.estimate`); None when not."""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FileRecord:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: str
    owner_id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    deadline_at: datetime
    priority: int
    dedup_scope: str
    metadata: dict[str, str] | None
    model: str | None
    status: BatchStatus
    created_at: datetime
    ingested_at: datetime | None
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelling_at: datetime | None
    cancelled_at: datetime | None
    output_file_id: str | None
    error_file_id: str | None
    output_expires_seconds: int | None
    errors: list[dict[str, Any]] | None
    total_count: int
    completed_count: int
    failed_count: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    """Input tokens the engine served from its prefix cache."""
    reasoning_tokens: int
    """Output tokens spent on reasoning."""
    deduplicated_count: int
    dedup_tokens_saved: int
    escalated_count: int
    requests_expire_at: datetime | None = None
    """When the batch's request rows (bodies, responses) are due to be pruned."""
    requests_pruned_at: datetime | None = None
    """When they were pruned: the batch and its counts stay, its request list is empty."""
    callback_url: str | None = None
    """Extension: where this batch's terminal event is also sent (besides the owner's
    webhook endpoints)."""
    callback_secret: str | None = None
    """The signing secret of ``callback_url`` deliveries (``whsec_...``)."""
    cancelled_count: int = 0
    """Requests that ended ``cancelled`` (never run: the batch was cancelled first), as
    of the last fold of the counters; exact once the batch is finished."""
    expired_count: int = 0
    """Requests that ended ``expired`` (still unsettled at the deadline), likewise."""
    estimated_completion_at: datetime | None = None
    """When its last request is expected to settle (``policy/eta.py``); None: unknown."""
    warnings: list[dict[str, Any]] | None = None
    """What admission found at create (``{code, message, param}``), when it accepted a
    batch that may not meet its window."""
    spot_gpu_seconds: float = 0.0
    """GPU-seconds spent on spot GPUs (every attempt's, retried ones too), as folded."""
    dedicated_gpu_seconds: float = 0.0
    """GPU-seconds spent on dedicated GPUs, likewise."""
    dedup_saved_gpu_seconds: float = 0.0
    """GPU-seconds deduplication saved: the time of the outputs it copied."""
    gpu_cost: Decimal = Decimal(0)
    """What the spent GPU time cost, priced when it was folded, in ``cost_currency``."""
    dedup_saved_cost: Decimal = Decimal(0)
    """The saved GPU-seconds at the dedicated price, likewise."""
    all_dedicated_cost: Decimal = Decimal(0)
    """What the spent and saved GPU time would have cost on dedicated GPUs alone."""
    cost_currency: str | None = None
    """None until GPU time was folded."""
    project_id: str = DEFAULT_PROJECT_ID

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> BatchRecord:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class ClaimedRequest:
    """A request a worker holds a lease on; ``attempt`` is its fencing token."""

    id: int
    batch_id: str
    custom_id: str
    url: str
    model: str
    body: bytes
    """The request body as JSON text, sent to the engine as it is (never parsed here)."""
    attempt: int
    failed_attempts: int
    interruptions: int = 0
    pool: str = "spot"
    prefix_key: int = 0
    """The hash of the prompt's shared head (0: none), for replica placement."""


WebhookDeliveryStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A URL a user registered for batch events. Its signing secrets are not part of it:
    only the create and rotate answers, the sender and the delivery duty ever see them."""

    id: str
    owner_id: str
    name: str
    url: str
    event_types: tuple[str, ...]
    signing_secret_hint: str
    previous_secret_expires_at: datetime | None
    """When the secret replaced by a rotation that kept it active stops signing (a past
    time once it has); None after a rotation that stopped it at once, or none."""
    created_at: datetime
    updated_at: datetime
    project_id: str = DEFAULT_PROJECT_ID

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WebhookEndpoint:
        values = {name: row[name] for name in cls.__slots__}
        values["event_types"] = tuple(row["event_types"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event for one target (an endpoint, or the batch's ``callback_url`` when
    ``endpoint_id`` is None) and how sending it went."""

    id: int
    event_id: str
    event_type: str
    batch_id: str
    owner_id: str
    endpoint_id: str | None
    status: WebhookDeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_response_status: int | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None
    project_id: str = DEFAULT_PROJECT_ID

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WebhookDelivery:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery the delivery duty holds a lease on; ``attempt`` is its fencing token."""

    id: int
    event_id: str
    payload: str
    """The exact body to send and sign, the same on every attempt."""
    attempt: int
    url: str | None
    """None when the target has no URL (then the delivery fails without a request)."""
    secrets: tuple[str, ...]
    """The secrets that sign it: the endpoint's, and the one it rotated from while that
    is still active; empty when there is none (the delivery fails like a missing URL)."""


UploadStatus = Literal["pending", "completed", "cancelled", "expired"]


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """An Upload (OpenAI's Uploads API): a file sent in parts, composed on completion."""

    id: str
    owner_id: str
    filename: str
    purpose: str
    bytes: int
    """The size declared on create; the completed parts must add up to it."""
    mime_type: str
    file_expires_seconds: int
    """The resulting file expires this long after it is created."""
    status: UploadStatus
    created_at: datetime
    expires_at: datetime
    completing_at: datetime | None
    """When a complete began composing it (a lease; None when none is underway)."""
    file_id: str | None
    project_id: str = DEFAULT_PROJECT_ID

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UploadRecord:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class UploadPartRecord:
    """One part of an upload; ``bytes`` is None while its bytes are still arriving."""

    id: str
    upload_id: str
    blob_key: str
    bytes: int | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UploadPartRecord:
        return cls(**{name: row[name] for name in cls.__slots__})
