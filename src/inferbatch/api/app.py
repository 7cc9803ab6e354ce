"""The ASGI application: routes, error mapping, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from inferbatch.api.admin import router as admin_router
from inferbatch.api.anthropic import router as anthropic_router
from inferbatch.api.audit import router as audit_router
from inferbatch.api.costs import router as costs_router
from inferbatch.api.deps import AppState
from inferbatch.api.limits import RequestLimits
from inferbatch.api.observe import RequestMetrics
from inferbatch.api.quotas import router as quotas_router
from inferbatch.api.routes import router
from inferbatch.api.trail import AuditTrail
from inferbatch.api.uploads import router as uploads_router
from inferbatch.api.webhooks import router as webhooks_router
from inferbatch.blobstore import BlobStore
from inferbatch.config import Settings
from inferbatch.db import users
from inferbatch.db.connector import pool_options
from inferbatch.db.scope import ScopedPool, request_scope
from inferbatch.engines.registry import EngineRegistry
from inferbatch.errors import (
    BadValue,
    BodyTooLarge,
    InferbatchError,
    NotFound,
    StorageUnavailable,
    Unavailable,
    from_validation,
)
from inferbatch.metrics import ApiMetrics, SystemMetrics
from inferbatch.oidc import OidcClient
from inferbatch.portal import install as install_portal
from inferbatch.protocol.openai import ERROR_RESPONSES
from inferbatch.services.auth_guard import AuthGuard

log = logging.getLogger(__name__)

READY_STORAGE_SECONDS = 2.5
"""How long /readyz waits for the blob store's check (probes time out at 3 s)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _document_validation_as_400(app: FastAPI) -> None:
    """FastAPI documents a 422 for every operation with parameters; a request that fails
    validation is answered 400 in OpenAI's envelope here, so the document says that."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            for operations in doc.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                doc.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _error(exc: InferbatchError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers())


async def _register_admin_key(pool: ScopedPool, key: str) -> None:
    """Accept INFERBATCH_API_KEY as an admin key (retried until the database answers)."""
    delay = 0.2
    while True:
        try:
            async with pool.unscoped() as conn:
                admin = await users.ensure_user(conn, "admin", is_admin=True)
                await users.add_key(conn, admin.id, key, role="owner")
            return
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            log.warning("registering the admin key failed (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)


class RequestScope:
    """Each request starts with no principal bound for row-level security and leaves none
    behind (``db/scope.py``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with request_scope():
            await self.app(scope, receive, send)


def create_app(
    settings: Settings,
    database_url: str,
    blobs: BlobStore,
    engines: EngineRegistry,
    now: Callable[[], datetime] = _utcnow,
) -> FastAPI:
    registry = CollectorRegistry()
    metrics = SystemMetrics(registry)
    api_metrics = ApiMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = ScopedPool(
            database_url,
            row_security=settings.row_security,
            **pool_options(
                min_size=1,
                max_size=16,
                name="inferbatch-api",
                timeout=5,
                check=True,
                prepare=settings.prepare_statements,
            ),
        )
        await pool.open(wait=False)
        # in the background: the API must come up (and answer 503) while the database is down
        registering = (
            asyncio.create_task(_register_admin_key(pool, settings.api_key))
            if settings.api_key
            else None
        )
        app.state.registering = registering
        oidc = OidcClient(settings) if settings.oidc_issuer else None
        app.state.inferbatch = AppState(
            settings=settings,
            db=pool,
            blobs=blobs,
            engines=engines,
            metrics=metrics,
            registry=registry,
            now=now,
            oidc=oidc,
            guard=AuthGuard(settings, now),
        )
        try:
            yield
        finally:
            if registering is not None:
                registering.cancel()
            if oidc is not None:
                await oidc.aclose()
            await pool.close()
            await engines.aclose()

    app = FastAPI(
        title="inferbatch",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        responses=ERROR_RESPONSES,
    )
    app.include_router(router)
    app.include_router(webhooks_router)
    app.include_router(uploads_router)
    app.include_router(anthropic_router)
    app.include_router(costs_router)
    app.include_router(admin_router)
    app.include_router(quotas_router)
    app.include_router(audit_router)
    install_portal(app)
    _document_validation_as_400(app)
    app.add_middleware(AuditTrail)
    app.add_middleware(RequestMetrics, metrics=api_metrics)
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.max_json_body_bytes,
        max_header_bytes=settings.max_header_bytes,
    )
    app.add_middleware(RequestScope)

    @app.exception_handler(InferbatchError)
    async def _known(request: Request, exc: InferbatchError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(StorageUnavailable)
    async def _storage_down(request: Request, exc: StorageUnavailable) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _error(exc)

    @app.exception_handler(psycopg.DataError)
    async def _bad_value(request: Request, exc: psycopg.DataError) -> JSONResponse:
        # a value the database cannot hold as given (a NUL character in text, a number out
        # of range): the request's fault, and nothing was changed
        log.info("%s %s: %s", request.method, request.url.path, exc)
        return _error(BadValue())

    @app.exception_handler(psycopg.OperationalError)
    async def _db_down(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return _error(Unavailable())

    @app.exception_handler(psycopg_pool.PoolTimeout)
    async def _pool_timeout(request: Request, exc: psycopg_pool.PoolTimeout) -> JSONResponse:
        return _error(Unavailable())

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(InferbatchError("The server had an error processing the request."))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(from_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(NotFound(f"Unknown route {request.method} {request.url.path}."))
        if exc.status_code == 413:
            return _error(BodyTooLarge(str(exc.detail)))
        err = InferbatchError(str(exc.detail))
        err.status_code = exc.status_code
        err.type = "invalid_request_error"
        return _error(err)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        st: AppState = request.app.state.inferbatch
        registering = request.app.state.registering
        if registering is not None and not registering.done():
            # not ready until INFERBATCH_API_KEY is accepted: clients would get 401s
            return JSONResponse({"status": "starting", "database": "admin key pending"}, 503)
        try:
            async with st.db.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            return JSONResponse({"status": "unavailable", "database": str(exc)}, 503)
        try:
            # the store's own probe gives up within ~2 s; the wait is a backstop
            await asyncio.wait_for(asyncio.to_thread(st.blobs.check), READY_STORAGE_SECONDS)
        except StorageUnavailable as exc:
            body = {"status": "unavailable", "database": "ok", "storage": exc.reason}
            return JSONResponse(body, 503)
        except TimeoutError:
            body = {"status": "unavailable", "database": "ok", "storage": "no answer in time"}
            return JSONResponse(body, 503)
        return JSONResponse({"status": "ok", "database": "ok", "storage": "ok"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        st: AppState = request.app.state.inferbatch
        try:
            async with st.db.unscoped(timeout=2.0) as conn:
                await metrics.refresh(conn)
            metrics.ready.set(1)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            metrics.ready.set(0)
            log.warning("metrics refresh failed: %s", exc)
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
