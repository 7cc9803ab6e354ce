"""Webhook endpoints: OpenAI's endpoint API (create, retrieve, update, list, delete,
rotate_secret, test) over :mod:`inferbatch.db.webhooks`, and the rule for URLs that may
receive webhooks (endpoints' and batches' ``callback_url``).

URLs: unless ``Settings.webhook_allow_private``, a URL whose host is, or resolves to, an
address that is not public (see :mod:`inferbatch.services.webhook_send`) is refused when it
is registered, and again each time something is sent to it.

Secrets: ``create`` and ``rotate_secret`` answer the secret, nothing else ever does. A
rotation with ``keep_old_secret_active_for_24_hours`` keeps the replaced secret signing for
:data:`ROTATION_GRACE` (each request then carries both signatures); without it the replaced
secret stops at once. A test event is signed as deliveries are at that moment.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import cast
from urllib.parse import urlsplit

from inferbatch.config import Settings
from inferbatch.db import webhooks as rows
from inferbatch.db.types import Conn, Pool
from inferbatch.domain import Principal, WebhookDelivery, WebhookEndpoint, project_filter
from inferbatch.errors import BadGateway, Conflict, InvalidRequest, NotFound
from inferbatch.ids import new_id
from inferbatch.protocol.webhooks import (
    EVENT_TYPES,
    MAX_URL_LENGTH,
    TEST_BATCH_ID,
    WebhookDeliveryObject,
    WebhookEndpointCreate,
    WebhookEndpointObject,
    WebhookEndpointTestResult,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    WebhookEventType,
    event_body,
)
from inferbatch.services.webhook_send import PUBLIC_ONLY, Sender, public_addresses
from inferbatch.services.webhook_send import new_secret as new_secret  # batches' callback_url

MAX_ENDPOINTS_PER_USER = 20
"""Bounds the fan-out of one event (one outbox row per endpoint)."""
ROTATION_GRACE = timedelta(hours=24)
"""How long a secret replaced with ``keep_old_secret_active_for_24_hours`` still signs."""


# -- URLs -----------------------------------------------------------------------------------


async def check_url(url: object, settings: Settings, param: str) -> str:
    """``url`` when it may receive webhooks: an absolute ``http`` or ``https`` URL whose host
    resolves only to public addresses (any host with ``settings.webhook_allow_private``).
    Otherwise :class:`~inferbatch.errors.InvalidRequest` naming ``param``."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{param} must be an http or https URL.", param=param)
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"{param} is longer than {MAX_URL_LENGTH} characters.", param=param)
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise InvalidRequest(f"{param} is not a valid URL: {exc}.", param=param) from exc
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest(
            f"{param} must be an absolute http or https URL, such as https://example.com/hook.",
            param=param,
        )
    if any(c.isspace() for c in url) or parts.fragment:
        raise InvalidRequest(f"{param} must not hold spaces or a #fragment.", param=param)
    if settings.webhook_allow_private:
        return url
    try:
        await public_addresses(host, port or (443 if parts.scheme == "https" else 80))
    except PermissionError as exc:
        raise InvalidRequest(
            f"{param} is not allowed: {exc}. {PUBLIC_ONLY}",
            param=param,
        ) from exc
    except (OSError, UnicodeError) as exc:
        raise InvalidRequest(f"{param}: the host {host!r} does not resolve.", param=param) from exc
    return url


# -- wire objects ---------------------------------------------------------------------------


def _ts(value: datetime) -> int:
    return int(value.timestamp())


def endpoint_object(e: WebhookEndpoint) -> WebhookEndpointObject:
    return WebhookEndpointObject(
        id=e.id,
        name=e.name,
        url=e.url,
        event_types=cast(list[WebhookEventType], list(e.event_types)),  # checked on the way in
        signing_secret_hint=e.signing_secret_hint,
        created_at=_ts(e.created_at),
        updated_at=_ts(e.updated_at),
    )


def _with_secret(e: WebhookEndpoint, secret: str) -> WebhookEndpointWithSecret:
    return WebhookEndpointWithSecret(**endpoint_object(e).model_dump(), signing_secret=secret)


def delivery_public_id(delivery_id: int) -> str:
    """The ``whdel_...`` id of a delivery row."""
    return f"whdel_{delivery_id:016x}"


def parse_delivery_public_id(public_id: str) -> int | None:
    if not public_id.startswith("whdel_"):
        return None
    try:
        return int(public_id.removeprefix("whdel_"), 16)
    except ValueError:
        return None


def delivery_object(d: WebhookDelivery) -> WebhookDeliveryObject:
    return WebhookDeliveryObject(
        id=delivery_public_id(d.id),
        webhook_endpoint_id=d.endpoint_id,
        event_id=d.event_id,
        event_type=cast(WebhookEventType, d.event_type),  # written from EVENT_TYPES only
        batch_id=d.batch_id,
        status=d.status,
        attempts=d.attempts,
        last_response_status=d.last_response_status,
        last_error=d.last_error,
        next_attempt_at=_ts(d.next_attempt_at) if d.status == "pending" else None,
        last_attempt_at=_ts(d.last_attempt_at) if d.last_attempt_at else None,
        created_at=_ts(d.created_at),
        finished_at=_ts(d.finished_at) if d.finished_at else None,
    )


# -- operations -----------------------------------------------------------------------------


def _in_order(event_types: list[WebhookEventType]) -> list[WebhookEventType]:
    """Distinct event types in the API's order."""
    return [t for t in EVENT_TYPES if t in event_types]


def _missing(endpoint_id: str) -> NotFound:
    return NotFound(f"No webhook endpoint with id {endpoint_id!r}.")


async def create(
    conn: Conn, user: Principal, body: WebhookEndpointCreate, settings: Settings, now: datetime
) -> WebhookEndpointWithSecret:
    """Register an endpoint for ``user``; the answer shows its secret (as only rotating it
    again does)."""
    url = await check_url(body.url, settings, "url")
    if await rows.count_endpoints(conn, user.project_id) >= MAX_ENDPOINTS_PER_USER:
        raise Conflict(
            f"A project may register at most {MAX_ENDPOINTS_PER_USER} webhook endpoints; "
            "delete one first."
        )
    secret = new_secret()
    endpoint = await rows.insert_endpoint(
        conn,
        endpoint_id=new_id("whe_"),
        owner_id=user.id,
        project_id=user.project_id,
        name=body.name,
        url=url,
        event_types=_in_order(body.event_types),
        secret=secret,
        now=now,
    )
    return _with_secret(endpoint, secret)


async def get(conn: Conn, user: Principal, endpoint_id: str) -> WebhookEndpoint:
    endpoint = await rows.get_endpoint(conn, endpoint_id, project_filter(user))
    if endpoint is None:
        raise _missing(endpoint_id)
    return endpoint


async def update(
    conn: Conn,
    user: Principal,
    endpoint_id: str,
    body: WebhookEndpointUpdate,
    settings: Settings,
    now: datetime,
) -> WebhookEndpoint:
    """Change the fields ``body`` sets; ``updated_at`` moves only when one changed. Events
    already queued keep their targets; the new URL is used from the next attempt on."""
    await get(conn, user, endpoint_id)
    url = await check_url(body.url, settings, "url") if body.url is not None else None
    endpoint = await rows.update_endpoint(
        conn,
        endpoint_id,
        project_filter(user),
        now=now,
        name=body.name,
        url=url,
        event_types=_in_order(body.event_types) if body.event_types is not None else None,
    )
    if endpoint is None:
        raise _missing(endpoint_id)
    return endpoint


async def delete(conn: Conn, user: Principal, endpoint_id: str) -> None:
    """Delete the endpoint with its deliveries: pending ones are never sent."""
    if not await rows.delete_endpoint(conn, endpoint_id, project_filter(user)):
        raise _missing(endpoint_id)


async def rotate_secret(
    conn: Conn, user: Principal, endpoint_id: str, *, keep_old: bool, now: datetime
) -> WebhookEndpointWithSecret:
    """Give the endpoint a new secret, answered once; the replaced one keeps signing for
    :data:`ROTATION_GRACE` with ``keep_old``, else stops now (pending deliveries included:
    secrets are read at each attempt)."""
    secret = new_secret()
    endpoint = await rows.rotate_secret(
        conn,
        endpoint_id,
        project_filter(user),
        secret=secret,
        keep_old_until=now + ROTATION_GRACE if keep_old else None,
        now=now,
    )
    if endpoint is None:
        raise _missing(endpoint_id)
    return _with_secret(endpoint, secret)


async def send_test(
    db: Pool,
    user: Principal,
    endpoint_id: str,
    event_type: WebhookEventType,
    settings: Settings,
    now: datetime,
) -> WebhookEndpointTestResult:
    """POST a signed ``event_type`` event about no real batch (``data.id`` is
    :data:`~inferbatch.protocol.webhooks.TEST_BATCH_ID`) to the endpoint now, under the
    delivery rules (address check, timeout, no redirects, every active secret), and answer
    the receiver's status, whatever it is. Nothing is recorded and ``updated_at`` stays.
    A refused address is a 400 naming ``url``; no answer is a 502."""
    async with db.connection() as conn:
        target = await rows.get_target(conn, endpoint_id, project_filter(user), now)
    if target is None:
        raise _missing(endpoint_id)
    event_id = new_id("evt_")
    body = event_body(event_id, event_type, _ts(now), TEST_BATCH_ID)
    async with Sender(allow_private=settings.webhook_allow_private) as sender:
        sent = await sender.send(target.url, target.secrets, event_id, body)
    if sent.refused:
        raise InvalidRequest(f"The endpoint's url is not allowed: {sent.error}", param="url")
    if sent.status is None:
        raise BadGateway(
            f"The test event was not answered: {sent.error}", code="webhook_endpoint_unreachable"
        )
    return WebhookEndpointTestResult(
        webhook_endpoint_id=endpoint_id, event_type=event_type, status_code=sent.status
    )


async def deliveries(
    conn: Conn, user: Principal, endpoint_id: str, *, after: str | None, limit: int
) -> tuple[list[WebhookDelivery], bool]:
    """A page of the endpoint's deliveries, newest first, and whether more follow."""
    await get(conn, user, endpoint_id)
    after_id = None
    if after is not None:
        after_id = parse_delivery_public_id(after)
        if after_id is None:
            raise InvalidRequest(f"after {after!r} is not a delivery id.", param="after")
    found = await rows.list_deliveries(conn, endpoint_id, after=after_id, limit=limit)
    return found[:limit], len(found) > limit
