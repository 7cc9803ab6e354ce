"""Per-app state and request dependencies (auth)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Header, Request

from inferbatch.blobstore import BlobStore
from inferbatch.config import Settings
from inferbatch.db.scope import ScopedPool, act_as
from inferbatch.domain import Principal, may_change
from inferbatch.engines.registry import EngineRegistry
from inferbatch.errors import PermissionDenied, Unauthorized, Unavailable
from inferbatch.metrics import SystemMetrics
from inferbatch.oidc import OidcClient, OidcError, TokenRejected, looks_like_jwt
from inferbatch.services import audit, idempotency, projects, sso
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
    db: ScopedPool
    """Scoped to the request's principal once authentication binds it (``db/scope.py``)."""
    blobs: BlobStore
    engines: EngineRegistry
    metrics: SystemMetrics
    registry: object
    now: Callable[[], datetime]
    guard: AuthGuard
    oidc: OidcClient | None = None
    """The single sign-on provider's client; None when INFERBATCH_OIDC_ISSUER is unset."""


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
    async with st.db.unscoped() as conn:  # the key names its project: none is known yet
        try:
            return await projects.authenticate(conn, key, st.now())
        except Unauthorized as exc:
            refused = exc
            await st.guard.failed(conn, address, key)
    raise refused


async def authenticated(request: Request) -> Principal:
    """The principal of the request's key, whatever the method. With single sign-on on,
    a bearer value that is a JWT is an access token of the provider instead. Who it is (or
    the head of a refused key) is left on ``request.state`` for the audit trail, and the
    principal is bound for row-level security: the request's later transactions see its
    project only. The key itself is looked up before that, as the connecting user."""
    st = state(request)
    key = presented_key(request)
    if st.oidc is not None and looks_like_jwt(key):
        principal = await _token_principal(request, st, st.oidc, key)
        audit.note_actor(request.state, audit.Actor("session", principal))
        act_as(principal)
        return principal
    try:
        principal = await authenticate_key(request, key)
    except Unauthorized:
        audit.note_actor(request.state, audit.Actor("api_key", None, audit.refused_key_prefix(key)))
        raise
    audit.note_actor(request.state, audit.Actor("api_key", principal))
    act_as(principal)
    return principal


async def _token_principal(
    request: Request, st: AppState, oidc: OidcClient, token: str
) -> Principal:
    """The user of a verified access token, in the project ``OpenAI-Project`` names."""
    try:
        claims = await oidc.verify_access_token(token)
    except TokenRejected as exc:
        raise Unauthorized(f"Invalid access token: {exc}", code=exc.code) from exc
    except OidcError as exc:
        raise Unavailable(
            f"The sign-in provider cannot be reached to check the token: {exc}"
        ) from exc
    project = request.headers.get(sso.PROJECT_HEADER) or None
    async with st.db.unscoped() as conn:
        return await sso.token_principal(conn, st.settings, claims, project, st.now())


async def current_user(request: Request) -> Principal:
    """The principal of the request's key, allowed to do what the request's method does:
    the role rule of every object route, in one place. A reader's key may read (GET);
    anything else it sends is refused with 403 before the route runs."""
    principal = await authenticated(request)
    if request.method not in READ_METHODS and not may_change(principal):
        raise PermissionDenied()
    return principal
