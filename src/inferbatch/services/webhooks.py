"""Webhooks: endpoint management, signing secrets, Standard Webhooks signatures, and the
address rule that keeps deliveries out of the deployment's own network.

Signatures follow Standard Webhooks (https://www.standardwebhooks.com), as OpenAI's own
webhooks and the official SDK's ``client.webhooks.unwrap()`` do: a secret is ``whsec_`` and
the base64 of random bytes; the key is those bytes; ``webhook-signature`` is ``v1,`` and the
base64 HMAC-SHA256 of ``"{webhook-id}.{webhook-timestamp}.{body}"``.

Addresses: unless ``Settings.webhook_allow_private``, a URL whose host is, or resolves to,
a loopback, link-local, private, unspecified, multicast or reserved address (or any other
address that is not globally routable) is refused when it is registered, and again when each
delivery is sent (see :mod:`inferbatch.scheduler.deliver`), which then connects only to an
address it checked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
from datetime import datetime
from typing import cast
from urllib.parse import urlsplit

from inferbatch.config import Settings
from inferbatch.db import webhooks as rows
from inferbatch.db.types import Conn
from inferbatch.domain import User, WebhookDelivery, WebhookEndpoint
from inferbatch.errors import Conflict, InvalidRequest, NotFound
from inferbatch.ids import new_id
from inferbatch.protocol.webhooks import (
    EVENT_TYPES,
    MAX_URL_LENGTH,
    CreatedWebhook,
    Webhook,
    WebhookCreate,
    WebhookEventType,
    WebhookUpdate,
)
from inferbatch.protocol.webhooks import WebhookDelivery as DeliveryObject

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
"""Standard Webhooks asks for 24 to 64 random bytes."""
MAX_ENDPOINTS_PER_USER = 20
"""Bounds the fan-out of one event (one outbox row per endpoint)."""
DISABLED_ERROR = "The endpoint was disabled."

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- secrets and signatures -----------------------------------------------------------------


def new_secret() -> str:
    """A new signing secret: ``whsec_`` and the base64 of :data:`SECRET_BYTES` random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret: the bytes its base64 part encodes."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    signed = f"{message_id}.{timestamp}.{body}".encode()
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (``message_id``: the event id)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


# -- addresses ------------------------------------------------------------------------------


def refused_address(address: Address) -> str | None:
    """Why deliveries may not go to ``address`` (None: a public address). An IPv6 address
    that embeds an IPv4 one (mapped, 6to4, Teredo) is judged by that one too."""
    embedded: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        for inner in (address.ipv4_mapped, address.sixtofour):
            if inner is not None:
                embedded.append(inner)
        if address.teredo is not None:
            embedded.extend(address.teredo)
    for a in embedded:
        for kind, hit in (
            ("a loopback", a.is_loopback),
            ("a link-local", a.is_link_local),
            ("an unspecified", a.is_unspecified),
            ("a multicast", a.is_multicast),
            ("a reserved", a.is_reserved),
            ("a private", a.is_private),
            ("a non-public", not a.is_global),
        ):
            if hit:
                return f"{a} is {kind} address"
    return None


def literal_address(host: str) -> Address | None:
    """``host`` as an IP address when it is one (``[::1]`` brackets already removed)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (TCP); OSError when it does not resolve."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


async def public_addresses(host: str, port: int) -> list[Address]:
    """The addresses of ``host``, all of them public; ``PermissionError`` naming the first
    that is not (a name with one private address is refused whole), OSError when the name
    does not resolve."""
    literal = literal_address(host)
    found = [literal] if literal is not None else await resolve(host, port)
    if not found:
        raise OSError(f"{host} has no address")
    for address in found:
        why = refused_address(address)
        if why is not None:
            raise PermissionError(f"{host}: {why}")
    return found


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
            f"{param} is not allowed: {exc}. Webhooks go to public addresses only.",
            param=param,
        ) from exc
    except (OSError, UnicodeError) as exc:
        raise InvalidRequest(f"{param}: the host {host!r} does not resolve.", param=param) from exc
    return url


# -- wire objects ---------------------------------------------------------------------------


def _ts(value: datetime) -> int:
    return int(value.timestamp())


def webhook_object(e: WebhookEndpoint) -> Webhook:
    return Webhook(
        id=e.id,
        url=e.url,
        events=cast(list[WebhookEventType], list(e.events)),  # checked on the way in
        description=e.description,
        enabled=e.enabled,
        created_at=_ts(e.created_at),
        updated_at=_ts(e.updated_at),
    )


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


def delivery_object(d: WebhookDelivery) -> DeliveryObject:
    return DeliveryObject(
        id=delivery_public_id(d.id),
        webhook_id=d.endpoint_id,
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


def owner_filter(user: User) -> str | None:
    """The owner id to filter by: None (everything) for admins. (Not imported from
    services.batches, which imports this module for callback URLs.)"""
    return None if user.is_admin else user.id


def _events(events: list[str] | None) -> list[str]:
    """Distinct event types in the API's order; all of them when None."""
    if events is None:
        return list(EVENT_TYPES)
    return [t for t in EVENT_TYPES if t in events]


async def create(
    conn: Conn, user: User, body: WebhookCreate, settings: Settings, now: datetime
) -> CreatedWebhook:
    """Register an endpoint for ``user``; the answer is the only one that shows its secret."""
    url = await check_url(body.url, settings, "url")
    if await rows.count_endpoints(conn, user.id) >= MAX_ENDPOINTS_PER_USER:
        raise Conflict(
            f"A user may register at most {MAX_ENDPOINTS_PER_USER} webhook endpoints; "
            "delete one first."
        )
    secret = new_secret()
    endpoint = await rows.insert_endpoint(
        conn,
        endpoint_id=new_id("wh_"),
        owner_id=user.id,
        url=url,
        events=_events(list(body.events) if body.events is not None else None),
        description=body.description,
        enabled=body.enabled,
        secret=secret,
        now=now,
    )
    return CreatedWebhook(**webhook_object(endpoint).model_dump(), secret=secret)


async def get(conn: Conn, user: User, endpoint_id: str) -> WebhookEndpoint:
    endpoint = await rows.get_endpoint(conn, endpoint_id, owner_filter(user))
    if endpoint is None:
        raise NotFound(f"No webhook with id {endpoint_id!r}.")
    return endpoint


async def update(
    conn: Conn,
    user: User,
    endpoint_id: str,
    body: WebhookUpdate,
    settings: Settings,
    now: datetime,
) -> WebhookEndpoint:
    """Change the fields ``body`` sets. Disabling an endpoint fails its pending deliveries:
    a disabled endpoint is sent nothing."""
    await get(conn, user, endpoint_id)
    url = await check_url(body.url, settings, "url") if body.url is not None else None
    endpoint = await rows.update_endpoint(
        conn,
        endpoint_id,
        owner_filter(user),
        now=now,
        url=url,
        events=_events(list(body.events)) if body.events is not None else None,
        enabled=body.enabled,
        description=body.description,
        set_description="description" in body.model_fields_set,
    )
    if endpoint is None:
        raise NotFound(f"No webhook with id {endpoint_id!r}.")
    if body.enabled is False:
        await rows.fail_pending(conn, endpoint_id, DISABLED_ERROR, now)
    return endpoint


async def delete(conn: Conn, user: User, endpoint_id: str) -> None:
    """Delete the endpoint with its deliveries: pending ones are never sent."""
    if not await rows.delete_endpoint(conn, endpoint_id, owner_filter(user)):
        raise NotFound(f"No webhook with id {endpoint_id!r}.")


async def deliveries(
    conn: Conn, user: User, endpoint_id: str, *, after: str | None, limit: int
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
