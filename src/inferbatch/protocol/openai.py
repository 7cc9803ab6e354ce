"""OpenAI's wire shapes for files, batches and errors, and inferbatch's extensions to them.

The official SDK's types are the contract: every field OpenAI sends is here, nullable where
OpenAI's is. Request models check shape only (types, required fields, unknown fields); the
rules that need the deployment's settings (window bounds, metadata limits, priorities)
belong to the services, which the portal calls too. Extension fields are marked as such.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from inferbatch.domain import ENDPOINTS, BatchStatus, RequestStatus

T = TypeVar("T")

Endpoint = Literal[
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/moderations",
]
assert set(Endpoint.__args__) == set(ENDPOINTS)  # type: ignore[attr-defined]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ---------------------------------------------------------------------------------


class ErrorDetail(_Wire):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Wire):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Invalid request"),
        (401, "Missing or invalid API key"),
        (403, "Not allowed"),
        (404, "No such object"),
        (409, "Not in a state that allows this"),
        (413, "Too large"),
        (429, "Over a limit"),
        (431, "Headers too large"),
        (503, "Database or file storage unavailable"),
    )
}
"""The errors any operation may answer, in OpenAI's envelope (the OpenAPI document's
``responses``)."""


# -- lists ----------------------------------------------------------------------------------


class ListPage(_Wire, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool


# -- files ----------------------------------------------------------------------------------


class FileObject(_Wire):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None


class FileDeleted(_Wire):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# -- batches --------------------------------------------------------------------------------


class ExpiresAfter(_Wire):
    anchor: Literal["created_at"]
    seconds: int


class BatchCreateRequest(_Wire):
    """The body of ``POST /v1/batches``."""

    input_file_id: str = Field(min_length=1)
    endpoint: Endpoint
    completion_window: str = Field(
        description="'24h' as OpenAI has it, or any duration ('30m', '4h', '7d') within the "
        "deployment's bounds."
    )
    metadata: dict[str, str] | None = Field(
        default=None,
        description="Up to 16 pairs. inferbatch reads 'priority' (an integer, 1 normal, 5 "
        "medium, 10+ high), 'dedup' ('user', 'global' or 'off') and 'allowed_locations' "
        "(comma-separated, see allowed_locations).",
    )
    output_expires_after: ExpiresAfter | None = None
    callback_url: str | None = Field(
        default=None,
        description="Extension: a URL told when this batch ends, signed as Standard "
        "Webhooks with the callback_secret returned once on create.",
    )
    allowed_locations: list[str] | None = Field(
        default=None,
        max_length=32,
        description="Extension: the only locations (zones or regions, or prefixes ending "
        "in '*', e.g. 'eu-*') whose workers may run this batch's requests; stored as "
        "metadata.allowed_locations, which may be given instead. Absent: anywhere.",
    )


class BatchError(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(_Wire):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchWarning(_Wire):
    """Extension: something admission found at create that did not stop the batch."""

    code: str
    message: str
    param: str | None = None


class RequestCounts(_Wire):
    total: int
    completed: int
    failed: int
    deduplicated: int = Field(description="Extension: completed with a copy of an identical one.")
    escalated: int = Field(description="Extension: moved from spot to dedicated capacity.")


class InputTokensDetails(_Wire):
    cached_tokens: int


class OutputTokensDetails(_Wire):
    reasoning_tokens: int


class BatchUsage(_Wire):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class GpuSeconds(_Wire):
    spot: float = Field(description="GPU-seconds spent on spot capacity.")
    dedicated: float = Field(description="GPU-seconds spent on dedicated capacity.")
    dedup_saved: float = Field(
        description="GPU-seconds not spent: the time of the outputs deduplication copied."
    )


class CostSavings(_Wire):
    spot: float = Field(description="Spot GPU-seconds x (dedicated price - spot price).")
    dedup: float = Field(description="Deduplication's saved GPU-seconds x dedicated price.")
    total: float


class BatchCost(_Wire):
    """Extension: what the batch's GPU time cost, priced when it was counted (the prices
    configured per pool and model), and what spot capacity and deduplication saved
    against running it all on dedicated capacity."""

    currency: str = Field(description='Lowercase ISO 4217, e.g. "usd".')
    amount: float = Field(description="The cost of the GPU time spent.")
    gpu_seconds: GpuSeconds
    saved: CostSavings
    all_dedicated_amount: float = Field(
        description="What the same work would have cost on dedicated capacity alone: "
        "amount + saved.total."
    )


class Batch(_Wire):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None
    output_expires_after: ExpiresAfter | None
    requests_expire_at: int | None = Field(
        description="Extension: when the per-request rows are pruned."
    )
    requests_pruned_at: int | None = Field(description="Extension: when they were pruned.")
    callback_url: str | None = Field(
        default=None, description="Extension: the URL told when this batch ends."
    )
    cost: BatchCost | None = Field(
        default=None,
        description="Extension: GPU time, its cost and the savings of spot capacity and "
        "deduplication, as counted so far (final once the batch has ended).",
    )
    estimated_completion_at: int | None = Field(
        default=None,
        description="Extension: when the last request is expected to settle (Unix "
        "seconds), from measured throughput, the work queued ahead and the workers up; "
        "updated while the batch runs. Null: unknown.",
    )
    warnings: list[BatchWarning] | None = Field(
        default=None,
        description="Extension: what admission found at create, e.g. window_too_short.",
    )


class CreatedBatch(Batch):
    """The answer to a create: the batch, and the callback secret, shown this once."""

    callback_secret: str | None = Field(
        default=None,
        description="Extension: the Standard Webhooks secret of callback_url deliveries.",
    )


# -- extensions: requests, workers, models --------------------------------------------------


class RequestUsage(_Wire):
    prompt_tokens: int | None
    completion_tokens: int | None


class RequestResponse(_Wire):
    status_code: int
    request_id: str | None
    body: Any


class BatchRequest(_Wire):
    """Extension: one request of a batch (``GET /v1/batches/{id}/requests``); ``url``,
    ``body`` and ``response`` only on ``GET /v1/requests/{id}``."""

    id: str
    object: Literal["batch.request"] = "batch.request"
    batch_id: str
    line: int
    custom_id: str
    model: str | None
    status: RequestStatus
    pool: str
    attempts: int
    failed_attempts: int
    interruptions: int
    worker_id: str | None
    started_at: int | None
    finished_at: int | None
    response_status: int | None
    error: dict[str, Any] | None
    deduplicated_from: str | None
    escalation_reason: str | None
    escalated_at: int | None
    usage: RequestUsage
    url: str | None = None
    body: Any = None
    response: RequestResponse | None = None


class Worker(_Wire):
    id: str
    object: Literal["worker"] = "worker"
    pool: str
    location: str | None = Field(
        default=None, description="The zone or region the worker declared; null: none."
    )
    host: str
    pid: int
    state: str
    in_flight: int
    started_at: int | None
    heartbeat_at: int | None


class Model(_Wire):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(_Wire):
    object: Literal["list"] = "list"
    data: list[Model]
