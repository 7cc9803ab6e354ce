"""The portal's plumbing: templates, the per-app portal state, who is signed in, CSRF checks,
and HTML error pages (the REST API answers JSON; the portal's routes answer pages).

Every portal route is declared on a router with ``route_class=PortalRoute``, whose handler
turns :class:`~inferbatch.errors.InferbatchError` (and the database being down) into a
friendly page, and a missing sign-in into a redirect to the sign-in page.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import psycopg
import psycopg_pool
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from inferbatch.api.deps import AppState, state
from inferbatch.db import auth_guard
from inferbatch.db.scope import act_as
from inferbatch.domain import Principal, may_change, project_filter
from inferbatch.errors import InferbatchError, PermissionDenied
from inferbatch.portal import formatting
from inferbatch.portal.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    FLASH_COOKIE,
    FLASH_MAX_AGE,
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    Flash,
    Session,
    SessionCodec,
    load_secret,
)
from inferbatch.services import audit, projects, sso

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_PREFIX = "/static/portal"
SECURITY_HEADERS = {
    # Scripts only from our own vendored files: no inline script, no eval (htmx's
    # allowEval is off too). Inline style attributes are allowed for widths of bars.
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


class SignInRequired(Exception):
    """No valid session: send the browser to the sign-in page."""


class CsrfRejected(Exception):
    """A state-changing request without this session's CSRF token."""


@dataclass
class Portal:
    """State of the portal in one api process (held on ``app.state.portal``)."""

    templates: Environment
    _codec: SessionCodec | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    health_cache: dict[str, tuple[float, Any]] = field(default_factory=dict)

    @classmethod
    def create(cls) -> Portal:
        env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        formatting.install(env)
        version = _static_version()
        env.globals["static"] = lambda name: f"{STATIC_PREFIX}/{name}?v={version}"
        return cls(templates=env)

    async def codec(self, st: AppState) -> SessionCodec:
        if self._codec is None:
            async with self._lock:
                if self._codec is None:
                    self._codec = SessionCodec(await load_secret(st.settings, st.db))
        return self._codec

    async def cached(
        self, key: str, ttl: float, make: Callable[[], Coroutine[Any, Any, Any]]
    ) -> Any:
        """``make()``'s result, reused for ``ttl`` seconds (engine pings, for instance)."""
        hit = self.health_cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]
        value = await make()
        self.health_cache[key] = (time.monotonic(), value)
        return value


def _static_version() -> str:
    """A digest of the static files, so browsers fetch them again after they change."""
    digest = hashlib.sha256()
    for path in sorted((HERE / "static").iterdir()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def portal_of(request: Request) -> Portal:
    p: Portal = request.app.state.portal
    return p


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def secure_cookies(request: Request, st: AppState) -> bool:
    public = st.settings.public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")


def set_session_cookie(
    response: Response, request: Request, st: AppState, codec: SessionCodec, session: Session
) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        codec.dump(session),
        max_age=SESSION_MAX_AGE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request, st),
    )


@dataclass
class Page:
    """Everything a signed-in page needs: who, their session and its CSRF token."""

    request: Request
    st: AppState
    portal: Portal
    codec: SessionCodec
    session: Session
    user: Principal

    @property
    def csrf_token(self) -> str:
        return self.codec.csrf_token(self.session)

    @property
    def project(self) -> str | None:
        """The project filter of this user's reads: None (everything) for admins."""
        return project_filter(self.user)

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return render(self.request, self.portal, template, status_code, page=self, **context)

    def redirect(self, url: str, flash: Flash | None = None) -> Response:
        return redirect(self.request, self.st, self.codec, url, flash)


def render(
    request: Request,
    portal: Portal,
    template: str,
    status_code: int = 200,
    *,
    page: Page | None = None,
    csrf_token: str = "",
    **context: Any,
) -> HTMLResponse:
    """Render a page or fragment. Full pages show (and clear) a pending flash message."""
    flash: Flash | None = None
    full_page = not template.startswith("partials/")
    if full_page and page is not None:
        flash = page.codec.load_flash(request.cookies.get(FLASH_COOKIE))
    html = portal.templates.get_template(template).render(
        request=request,
        user=page.user if page else None,
        csrf_token=page.csrf_token if page else csrf_token,
        flash=flash,
        path=request.url.path,
        now=page.st.now() if page else None,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def redirect(
    request: Request, st: AppState, codec: SessionCodec, url: str, flash: Flash | None = None
) -> Response:
    """303 to ``url`` (an htmx request is told to navigate there instead)."""
    response: Response
    if is_htmx(request):
        response = Response(status_code=204, headers={"hx-redirect": url})
    else:
        response = RedirectResponse(url, status_code=303)
    if flash is not None:
        response.set_cookie(
            FLASH_COOKIE,
            codec.dump_flash(flash),
            max_age=FLASH_MAX_AGE,
            path="/",
            httponly=True,
            samesite="lax",
            secure=secure_cookies(request, st),
        )
    return response


async def session_principal(st: AppState, session: Session | None) -> Principal | None:
    """Who a session acts as now: its key's principal, or its single sign-on user in its
    project; None when signed out (here, or on any replica: its nonce is recorded), or
    once the key or the membership is gone."""
    if session is None or not session.signed_in:
        return None
    async with st.db.unscoped() as conn:
        if await auth_guard.signed_out(conn, session.nonce):
            return None
        if session.key_id is not None:
            return await projects.session_principal(conn, session.key_id, st.now())
        assert session.user_id is not None and session.project_id is not None
        return await sso.session_principal(conn, session.user_id, session.project_id)


async def current_page(request: Request) -> Page:
    """The signed-in user's page context, or :class:`SignInRequired`. The user is bound
    for row-level security: the page's later transactions see its project only."""
    st = state(request)
    portal = portal_of(request)
    codec = await portal.codec(st)
    session = codec.load(request.cookies.get(SESSION_COOKIE))
    user = await session_principal(st, session)
    if user is None or session is None:
        raise SignInRequired()
    audit.note_actor(request.state, audit.Actor("session", user))
    act_as(user)
    return Page(request, st, portal, codec, session, user)


async def checked_action(request: Request) -> Page:
    """:func:`current_page` for a state-changing request, which must carry the session's
    CSRF token: in the ``X-CSRF-Token`` header (htmx sends it on every request) or in an
    urlencoded form's ``csrf_token`` field. Multipart bodies are never parsed here."""
    page = await current_page(request)
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        value = (await request.form()).get(CSRF_FIELD)
        token = value if isinstance(value, str) else None
    if not page.codec.csrf_ok(page.session, token):
        raise CsrfRejected()
    return page


async def checked_change(request: Request) -> Page:
    """:func:`checked_action` for an action that creates, cancels, retries or deletes: a
    reader's session is refused (403), by the same role rule as the API's routes."""
    page = await checked_action(request)
    if not may_change(page.user):
        raise PermissionDenied()
    return page


PageDep = Annotated[Page, Depends(current_page)]
SessionActionDep = Annotated[Page, Depends(checked_action)]
"""A state-changing request of the session itself (signing out): any role may."""
ActionDep = Annotated[Page, Depends(checked_change)]


async def _error_page(request: Request, status_code: int, title: str, message: str) -> Response:
    portal = portal_of(request)
    if is_htmx(request):
        return render(
            request, portal, "partials/alert.html", status_code, level="danger", message=message
        )
    page: Page | None = None
    with contextlib.suppress(SignInRequired, psycopg.Error, psycopg_pool.PoolTimeout):
        page = await current_page(request)  # to show the menu to a signed-in user
    return render(
        request,
        portal,
        "error.html",
        status_code,
        page=page,
        title=title,
        message=message,
        code=status_code,
    )


TITLES = {
    400: "That did not work",
    403: "Not allowed",
    404: "Not found",
    409: "Not possible right now",
    413: "Too large",
    503: "Database unavailable",
}


class PortalRoute(APIRoute):
    """An APIRoute whose errors are pages: sign-in redirects, 403, 404, 409, 503."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def portal_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                target = "/login"
                if request.method == "GET" and not is_htmx(request):
                    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    target += "?next=" + quote(here, safe="")
                if is_htmx(request):
                    return Response(status_code=401, headers={"hx-redirect": target})
                return RedirectResponse(target, status_code=303)
            except RequestValidationError:
                return await _error_page(
                    request, 400, TITLES[400], "Some part of this address is not valid."
                )
            except CsrfRejected:
                return await _error_page(
                    request,
                    403,
                    "Form expired",
                    "This form is out of date or did not come from this site. "
                    "Reload the page and try again.",
                )
            except InferbatchError as exc:
                title = TITLES.get(exc.status_code, "Something went wrong")
                if exc.status_code >= 500:
                    log.warning("portal %s %s: %s", request.method, request.url.path, exc)
                return await _error_page(request, exc.status_code, title, exc.message)
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                log.warning("database unavailable: %s", exc)
                return await _error_page(
                    request, 503, TITLES[503], "The database is unavailable; try again shortly."
                )
            except Exception:
                log.exception("portal error on %s %s", request.method, request.url.path)
                return await _error_page(
                    request,
                    500,
                    "Something went wrong",
                    "The server had an error showing this page. It has been logged.",
                )

        return portal_handler
