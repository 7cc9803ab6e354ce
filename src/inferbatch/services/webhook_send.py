"""Sending one webhook: signing secrets, Standard Webhooks signatures, the address rule
that keeps requests out of the deployment's own network, and the signed POST itself, shared
by the delivery duty (:mod:`inferbatch.scheduler.deliver`) and an endpoint's test event.

Signatures follow Standard Webhooks (https://www.standardwebhooks.com), as OpenAI's own
webhooks and the official SDK's ``client.webhooks.unwrap()`` do: a secret is ``whsec_`` and
the base64 of random bytes; the key is those bytes; a signature is ``v1,`` and the base64
HMAC-SHA256 of ``"{webhook-id}.{webhook-timestamp}.{body}"``. ``webhook-signature`` holds one
per active secret, separated by spaces; a receiver accepts the request when any verifies.

Addresses: unless ``allow_private``, a host that is, or resolves to, a loopback, link-local,
private, unspecified, multicast or reserved address (or any other address that is not
globally routable) is refused. :class:`Sender` resolves the host anew for each connection and
connects only to addresses it just checked (:class:`CheckedResolver`), so a DNS answer that
changed since the URL was registered cannot turn a request inward.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from inferbatch import __version__

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
"""Standard Webhooks asks for 24 to 64 random bytes."""
TIMEOUT_SECONDS = 10.0
"""The whole of one request: connecting, sending and reading the answer's status."""
MAX_ERROR_CHARS = 300
"""How much of a failed answer's body is kept as its error."""
PUBLIC_ONLY = "Webhooks go to public addresses only."

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- secrets and signatures -----------------------------------------------------------------


def new_secret() -> str:
    """A new signing secret: ``whsec_`` and the base64 of :data:`SECRET_BYTES` random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret: the bytes its base64 part encodes."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """One ``v1,`` signature of an attempt under ``secret``."""
    signed = f"{message_id}.{timestamp}.{body}".encode()
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    signing_secrets: Sequence[str], message_id: str, timestamp: int, body: str
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (``message_id``: the event id), signed
    under each of ``signing_secrets`` (at least one)."""
    if isinstance(signing_secrets, str) or not signing_secrets:
        raise ValueError("signing_secrets is a non-empty sequence of secrets")
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            sign(secret, message_id, timestamp, body) for secret in signing_secrets
        ),
    }


# -- addresses ------------------------------------------------------------------------------


def refused_address(address: Address) -> str | None:
    """Why webhooks may not go to ``address`` (None: a public address). An IPv6 address
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


class CheckedResolver(AbstractResolver):
    """Resolves names for the HTTP client and returns only addresses that pass
    :func:`refused_address`: a name with any other is refused whole (``PermissionError``,
    which the client reports as a connection error)."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = literal_address(result["host"].split("%", 1)[0])
            why = refused_address(address) if address is not None else "not an IP address"
            if why is not None:
                raise PermissionError(f"{host}: {why}")
        return results

    async def close(self) -> None:
        await self._inner.close()


# -- sending --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    """How one signed POST went: the receiver's status when it answered (any status; a 2xx
    delivers), else ``error`` says why not, with ``refused`` when the address rule stopped
    it before anything was sent."""

    status: int | None
    error: str | None = None
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"No answer within {TIMEOUT_SECONDS:g} s."
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"Could not connect: {exc.os_error or exc}."
    text = str(exc) or type(exc).__name__
    return text[:MAX_ERROR_CHARS]


class Sender:
    """POSTs signed events, one HTTP client for many; close it with :meth:`aclose` (or use
    it as an async context manager). Redirects are never followed."""

    def __init__(self, *, allow_private: bool, wall_clock: Callable[[], float] = time.time) -> None:
        self.allow_private = allow_private
        self.wall_clock = wall_clock
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                # every new connection resolves (and so checks) the name again
                use_dns_cache=False,
                resolver=None if self.allow_private else CheckedResolver(),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
                headers={"user-agent": f"inferbatch-webhooks/{__version__}"},
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(
        self, url: str, signing_secrets: Sequence[str], message_id: str, body: str
    ) -> Sent:
        """POST ``body`` to ``url`` with the Standard Webhooks headers, ``webhook-timestamp``
        being the wall-clock time now; never raises for what the receiver or the network
        does."""
        try:
            host = urlsplit(url).hostname or ""
            if not self.allow_private and literal_address(host) is not None:
                # the client does not resolve an address, so check it here
                await public_addresses(host, 0)
            headers = signed_headers(signing_secrets, message_id, int(self.wall_clock()), body)
            headers["content-type"] = "application/json"
            async with self._client().post(
                url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return Sent(response.status)
                raw = await response.content.read(MAX_ERROR_CHARS)
                text = raw.decode("utf-8", "replace").strip()
                return Sent(
                    response.status, f"HTTP {response.status}" + (f": {text}" if text else "")
                )
        except PermissionError as exc:
            return Sent(None, f"Refused: {exc}. {PUBLIC_ONLY}", refused=True)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, PermissionError):
                return Sent(None, f"Refused: {exc.os_error}. {PUBLIC_ONLY}", refused=True)
            return Sent(None, _describe(exc))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return Sent(None, _describe(exc))
