"""Wire shapes of webhooks: OpenAI's webhook endpoint API (``/v1/webhook_endpoints``,
``/v1/webhook_event_types``: the official SDK's ``client.webhooks``), the deliveries listing
(an inferbatch extension) and the events sent to endpoints.

An event body is what the SDK's ``client.webhooks.unwrap()`` parses into
``BatchCompletedWebhookEvent`` and its siblings:
``{"id": "evt_...", "object": "event", "type": "batch.completed", "created_at": <unix>,
"data": {"id": "batch_..."}}``.

The SDK accepts every event type OpenAI has (``response.completed``, ``eval.run.failed``,
...); this deployment emits the four batch ones only, and a request naming any other is
refused (a 400 naming the field and listing :data:`EVENT_TYPES`) rather than accepted for an
event that would never come. Request models check shape only; URL rules (schemes, hosts that
resolve to private addresses) belong to :mod:`inferbatch.services.webhooks`.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

WebhookEventType = Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]
EVENT_TYPES: tuple[WebhookEventType, ...] = get_args(WebhookEventType)
"""Every event type this deployment emits, in the order the API lists them."""

BATCH_EVENTS: dict[str, WebhookEventType] = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}
"""The event sent when a batch reaches each terminal status."""

MAX_URL_LENGTH = 2048
MAX_NAME_LENGTH = 256
TEST_BATCH_ID = "batch_test"
"""The ``data.id`` of a test event: names no batch (ids are ``batch_`` and 24 characters)."""


def _refuse_unsent(value: object) -> object:
    """Refuse, by name, an event type that is a string but not one of :data:`EVENT_TYPES`
    (the SDK's other types among them); anything else is left to the type check."""
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, str) and item not in EVENT_TYPES:
            raise ValueError(
                f"{item!r} is not an event type this deployment sends; "
                f"supported: {', '.join(EVENT_TYPES)}"
            )
    return value


SentEventType = Annotated[WebhookEventType, BeforeValidator(_refuse_unsent)]
SentEventTypes = Annotated[
    list[WebhookEventType], BeforeValidator(_refuse_unsent), Field(min_length=1)
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests -------------------------------------------------------------------------------


class WebhookEndpointCreate(_Wire):
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    url: str = Field(max_length=MAX_URL_LENGTH, description="http(s) URL that receives events.")
    event_types: SentEventTypes = Field(description="The event types to send to this endpoint.")


class WebhookEndpointUpdate(_Wire):
    """Only the fields given change (absent or null: unchanged); ``event_types`` is the
    complete new set."""

    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LENGTH)
    url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    event_types: SentEventTypes | None = None


class WebhookRotateSecret(_Wire):
    keep_old_secret_active_for_24_hours: bool = Field(
        default=False,
        description="Keep signing with the previous secret too for 24 hours; by default it "
        "stops at once.",
    )


class WebhookEndpointTest(_Wire):
    event_type: SentEventType


# -- responses ------------------------------------------------------------------------------


class WebhookEndpointObject(_Wire):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    name: str
    url: str
    event_types: list[WebhookEventType]
    signing_secret_hint: str
    """The secret's prefix and last characters, e.g. ``whsec_...Ab3=``."""
    created_at: int
    updated_at: int
    """The last change of the name, URL, event types or secret; an update that changes
    nothing, and a test, leave it."""


class WebhookEndpointWithSecret(WebhookEndpointObject):
    signing_secret: str
    """``whsec_`` + base64; returned by create and rotate_secret only, never again."""


class DeletedWebhookEndpoint(_Wire):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool


class WebhookEndpointTestResult(_Wire):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: WebhookEventType
    status_code: int
    """The receiver's HTTP status (redirects are not followed)."""
    success: Literal[True] = True
    """Always true: the request completed. A receiver that could not be reached is an
    error answer instead."""


class WebhookEventTypeList(_Wire):
    object: Literal["list"] = "list"
    data: list[WebhookEventType]


class WebhookDeliveryObject(_Wire):
    """Extension: one event for one target and how sending it went."""

    id: str
    object: Literal["webhook_endpoint.delivery"] = "webhook_endpoint.delivery"
    webhook_endpoint_id: str | None
    """The endpoint; None for a delivery to the batch's own ``callback_url``."""
    event_id: str
    """The ``webhook-id`` header: the same on every attempt of this event."""
    event_type: WebhookEventType
    batch_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_response_status: int | None
    last_error: str | None
    next_attempt_at: int | None
    """When the next attempt is due; None once delivered or failed."""
    last_attempt_at: int | None
    created_at: int
    finished_at: int | None


# -- events ---------------------------------------------------------------------------------


class BatchEventData(_Wire):
    id: str


class BatchEvent(_Wire):
    id: str
    object: Literal["event"] = "event"
    type: WebhookEventType
    created_at: int
    data: BatchEventData


def event_body(event_id: str, event_type: WebhookEventType, created_at: int, batch_id: str) -> str:
    """The JSON text of a batch event, compact, in OpenAI's field order."""
    event = BatchEvent(
        id=event_id, type=event_type, created_at=created_at, data=BatchEventData(id=batch_id)
    )
    return event.model_dump_json()
