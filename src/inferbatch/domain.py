"""Domain objects: frozen dataclasses converted from rows at the data-access edge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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
TERMINAL_BATCH_STATUSES = frozenset({"failed", "completed", "expired", "cancelled"})


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    is_admin: bool


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
