"""Wire shapes of webhooks: the endpoint API (``/v1/webhooks``, an inferbatch extension) and
the events sent to endpoints, in OpenAI's webhook event shape.

An event body is what the official SDK's ``client.webhooks.unwrap()`` parses into
``BatchCompletedWebhookEvent`` and its siblings:
``{"id": "evt_...", "object": "event", "type": "batch.completed", "created_at": <unix>,
"data": {"id": "batch_..."}}``. Request models check shape only; URL rules (schemes, hosts
that resolve to private addresses) belong to :mod:`inferbatch.services.webhooks`.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

WebhookEventType = Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]
EVENT_TYPES: tuple[str, ...] = get_args(WebhookEventType)
"""Every event type, in the order the API lists them; an endpoint created without
``events`` receives all of them."""

BATCH_EVENTS: dict[str, WebhookEventType] = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}
"""The event sent when a batch reaches each terminal status."""

MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 512


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests -------------------------------------------------------------------------------


class WebhookCreate(_Wire):
    url: str = Field(max_length=MAX_URL_LENGTH, description="http(s) URL that receives events.")
    events: list[WebhookEventType] | None = Field(
        default=None, min_length=1, description="Event types to send; default all."
    )
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_LENGTH)
    enabled: bool = True


class WebhookUpdate(_Wire):
    """Only the fields given change; ``description: null`` clears it."""

    url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    events: list[WebhookEventType] | None = Field(default=None, min_length=1)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_LENGTH)
    enabled: bool | None = None


# -- responses ------------------------------------------------------------------------------


class Webhook(_Wire):
    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    events: list[WebhookEventType]
    description: str | None
    enabled: bool
    created_at: int
    updated_at: int


class CreatedWebhook(Webhook):
    secret: str
    """The signing secret (``whsec_`` + base64), returned by create only, never again."""


class WebhookDeleted(_Wire):
    id: str
    object: Literal["webhook"] = "webhook"
    deleted: bool


class WebhookList(_Wire):
    object: Literal["list"] = "list"
    data: list[Webhook]
    first_id: str | None
    last_id: str | None
    has_more: bool


class WebhookDelivery(_Wire):
    id: str
    object: Literal["webhook.delivery"] = "webhook.delivery"
    webhook_id: str | None
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


class WebhookDeliveryList(_Wire):
    object: Literal["list"] = "list"
    data: list[WebhookDelivery]
    first_id: str | None
    last_id: str | None
    has_more: bool


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
