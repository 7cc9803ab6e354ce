"""Per-app state and request dependencies (auth)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Header, Request

from inferbatch.blobstore import BlobStore
from inferbatch.config import Settings
from inferbatch.db.types import Pool
from inferbatch.domain import Principal, may_change
from inferbatch.engines.registry import EngineRegistry
from inferbatch.errors import PermissionDenied, Unauthorized
from inferbatch.metrics import SystemMetrics
from inferbatch.services import idempotency, projects
from inferbatch.services.auth_guard import AuthGuard

IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        description="A retried create with the same key and request returns the first "
        "result; another request under the key is a 409. Kept 24 hours.",
    ),
]


@dataclass
class AppState:
    settings: Settings
    db: Pool
    blobs: BlobStore
    engines: EngineRegistry
    metrics: SystemMetrics
    registry: object
    now: Callable[[], datetime]
    guard: AuthGuard


def state(request: Request) -> AppState:
    s: AppState = request.app.state.inferbatch
    return s


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that only read: every other one creates, changes, cancels, retries or deletes."""


def presented_key(request: Request) -> str:
    """The key of ``Authorization: Bearer <key>`` (OpenAI's header) or ``x-api-key: <key>``
    (Anthropic's); Unauthorized when there is none."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        key = request.headers.get("x-api-key", "")
    if not key.strip():
        raise Unauthorized()
    return key.strip()


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def authenticate_key(request: Request, key: str) -> Principal:
    """The principal of API key ``key`` presented by this request's client. A caller with
    too many recent failures is refused (429) before the key is looked up; a failure is
    counted."""
    st = state(request)
    address = client_address(request)
    st.guard.check(address, key)
    async with st.db.connection() as conn:
        try:
            return await projects.authenticate(conn, key, st.now())
        except Unauthorized as exc:
            refused = exc
            await st.guard.failed(conn, address, key)
    raise refused


async def authenticated(request: Request) -> Principal:
    """The principal of the request's key, whatever the method."""
    return await authenticate_key(request, presented_key(request))


async def current_user(request: Request) -> Principal:
    """The principal of the request's key, allowed to do what the request's method does:
    the role rule of every object route, in one place. A reader's key may read (GET);
    anything else it sends is refused with 403 before the route runs."""
    principal = await authenticated(request)
    if request.method not in READ_METHODS and not may_change(principal):
        raise PermissionDenied()
    return principal
