"""Per-app state and request dependencies (auth)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Header, Request

from inferbatch.blobstore import BlobStore
from inferbatch.config import Settings
from inferbatch.db import users
from inferbatch.db.types import Pool
from inferbatch.domain import User
from inferbatch.engines.registry import EngineRegistry
from inferbatch.errors import Unauthorized
from inferbatch.metrics import SystemMetrics
from inferbatch.services import idempotency

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


def state(request: Request) -> AppState:
    s: AppState = request.app.state.inferbatch
    return s


async def current_user(request: Request) -> User:
    """The key's user: from ``Authorization: Bearer <key>`` (OpenAI's header) or
    ``x-api-key: <key>`` (Anthropic's)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        key = request.headers.get("x-api-key", "")
    if not key.strip():
        raise Unauthorized()
    async with state(request).db.connection() as conn:
        user = await users.user_for_key(conn, key.strip())
    if user is None:
        raise Unauthorized("Incorrect API key provided.")
    return user
