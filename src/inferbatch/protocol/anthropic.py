"""Anthropic's wire shapes: Message Batches, the Messages a batch asks for and answers,
and errors.

The official ``anthropic`` SDK's types are the contract (``anthropic.types.messages``):
field names, nullability and RFC 3339 timestamps as it reads them. Request models check
shape only, what Anthropic checks before it accepts a batch (``custom_id``, ``model``,
``max_tokens``, ``messages``, no streaming); the engine that runs a request judges the
rest of its parameters, which therefore pass through unchanged (``extra="allow"``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """A shape whose other fields belong to the engine that runs the request."""

    model_config = ConfigDict(extra="allow")


# -- errors ---------------------------------------------------------------------------------

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
]


ERROR_TYPES: dict[int, ErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> ErrorType:
    """The error type Anthropic gives an HTTP status (another 4xx: invalid request;
    another 5xx: API error)."""
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


class ErrorObject(_Wire):
    type: str
    """One of :data:`ErrorType` for errors made here; an engine that serves the Messages
    API itself may name others, which are kept."""
    message: str


class ErrorResponse(_Wire):
    """The body of every error answer, and a request's error in its errored result."""

    type: Literal["error"] = "error"
    error: ErrorObject


# -- creating a batch -----------------------------------------------------------------------

CUSTOM_ID_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


def _blocks(value: Any) -> Any:
    """A message's content (or the system prompt): a string or a list of content blocks,
    each an object with a ``type``."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError("must be a string or a list of content blocks")
    for i, block in enumerate(value):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise ValueError(f"block {i} must be an object with a string 'type'")
    return value


Content = Annotated[str | list[dict[str, Any]], BeforeValidator(_blocks)]


class MessageParam(_Wire):
    role: Literal["user", "assistant"]
    content: Content


class MessageCreateParams(_Open):
    """A request's ``params``: a Messages API body, without ``stream``."""

    model: str = Field(min_length=1)
    max_tokens: StrictInt = Field(ge=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: Content | None = None
    stop_sequences: list[StrictStr] | None = None
    stream: bool | None = None

    @field_validator("model")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:  # a model name is stored as text, which cannot hold one
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("streaming is not supported in a Message Batch; leave it out")
        return value


class MessageBatchRequestParam(_Wire):
    """One entry of ``requests``."""

    custom_id: Annotated[str, StringConstraints(pattern=CUSTOM_ID_PATTERN)]
    params: MessageCreateParams


class MessageBatchCreateParams(_Wire):
    """The body of ``POST /v1/messages/batches`` (as documented)."""

    requests: list[MessageBatchRequestParam] = Field(min_length=1, max_length=100_000)


class MessageBatchEnvelope(_Wire):
    """The body's outer shape, checked first; its entries are then checked one at a time
    with :class:`MessageBatchRequestParam` (a body holds up to 100,000: none is kept as a
    model)."""

    requests: list[Any] = Field(min_length=1)


# -- the batch ------------------------------------------------------------------------------


class MessageBatchRequestCounts(_Wire):
    """Requests count as ``processing`` until the whole batch has ended, then as one of
    the other four; the five always add up to the batch's requests."""

    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class MessageBatch(_Wire):
    id: str
    type: Literal["message_batch"] = "message_batch"
    processing_status: Literal["in_progress", "canceling", "ended"]
    request_counts: MessageBatchRequestCounts
    ended_at: datetime | None
    created_at: datetime
    expires_at: datetime
    """24 hours after creation: what has not run by then expires."""
    archived_at: datetime | None
    cancel_initiated_at: datetime | None
    results_url: str | None
    """Where the results are, once the batch has ended."""


class MessageBatchList(_Wire):
    data: list[MessageBatch]
    has_more: bool
    """Whether there are more batches in the direction of the page asked for."""
    first_id: str | None
    last_id: str | None


class DeletedMessageBatch(_Wire):
    id: str
    type: Literal["message_batch_deleted"] = "message_batch_deleted"


# -- a message ------------------------------------------------------------------------------

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"]


class Usage(_Wire):
    input_tokens: int
    """Input tokens not read from or written to the cache (the total input is the sum of
    the three input counts)."""
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class TextBlock(_Wire):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(_Wire):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str


class ToolUseBlock(_Wire):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[TextBlock | ThinkingBlock | ToolUseBlock, Field(discriminator="type")]


class Message(_Wire):
    """An assistant's answer, as the Messages API returns it."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


# -- results --------------------------------------------------------------------------------


class SucceededResult(_Wire):
    type: Literal["succeeded"] = "succeeded"
    message: dict[str, Any]
    """The :class:`Message` as the engine (or the translation) answered it."""


class ErroredResult(_Wire):
    type: Literal["errored"] = "errored"
    error: ErrorResponse


class CanceledResult(_Wire):
    type: Literal["canceled"] = "canceled"


class ExpiredResult(_Wire):
    type: Literal["expired"] = "expired"


Result = Annotated[
    SucceededResult | ErroredResult | CanceledResult | ExpiredResult,
    Field(discriminator="type"),
]


class MessageBatchIndividualResponse(_Wire):
    """One line of a batch's results (``GET /v1/messages/batches/{id}/results``)."""

    custom_id: str
    result: Result
