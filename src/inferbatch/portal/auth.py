"""Signing in with an API key, and signing out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from inferbatch.api.deps import state
from inferbatch.errors import Unauthorized
from inferbatch.portal.session import CSRF_FIELD, SESSION_COOKIE, SessionCodec
from inferbatch.portal.web import (
    PortalRoute,
    SessionActionDep,
    portal_of,
    render,
    session_principal,
    set_session_cookie,
)
from inferbatch.services import audit, projects

router = APIRouter(route_class=PortalRoute, include_in_schema=False)


def safe_next(value: object) -> str:
    """A local path to go to after sign-in; anything else (another site) becomes ``/``."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    return value


async def _signed_in(request: Request, codec: SessionCodec) -> bool:
    session = codec.load(request.cookies.get(SESSION_COOKIE))
    return await session_principal(state(request), session) is not None


@router.get("/login")
async def login_form(request: Request) -> Response:
    st = state(request)
    portal = portal_of(request)
    codec = await portal.codec(st)
    target = safe_next(request.query_params.get("next"))
    if await _signed_in(request, codec):
        return RedirectResponse(target, status_code=303)
    # An anonymous session carries the sign-in form's CSRF token.
    session = codec.load(request.cookies.get(SESSION_COOKIE)) or codec.new()
    response = render(
        request,
        portal,
        "login.html",
        csrf_token=codec.csrf_token(session),
        next=target,
        error=None,
        signed_out="signed_out" in request.query_params,
        sso=st.oidc is not None,
    )
    set_session_cookie(response, request, st, codec, session)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    st = state(request)
    portal = portal_of(request)
    codec = await portal.codec(st)
    form = await request.form()
    target = safe_next(form.get("next"))
    session = codec.load(request.cookies.get(SESSION_COOKIE))
    token = form.get(CSRF_FIELD)
    if session is None or not codec.csrf_ok(session, token if isinstance(token, str) else None):
        session = codec.new()
        error = "The sign-in form expired. Please try again."
        status = 403
    else:
        key = form.get("api_key")
        key = key.strip() if isinstance(key, str) else ""
        key_id = None
        refused = "That API key is not valid."
        if key:
            try:
                async with st.db.unscoped() as conn:
                    who = await projects.authenticate(conn, key, st.now())
                key_id = who.key_id
                audit.note_actor(request.state, audit.Actor("session", who))
            except Unauthorized as exc:
                audit.note_actor(
                    request.state, audit.Actor("session", None, audit.refused_key_prefix(key))
                )
                if exc.code != "invalid_api_key":  # revoked, expired: say which
                    refused = exc.message
        if key_id is not None:
            # A fresh nonce on sign-in: a session fixed before it is worth nothing after.
            signed_in = RedirectResponse(target, status_code=303)
            set_session_cookie(signed_in, request, st, codec, codec.new(key_id))
            return signed_in
        error = refused if key else "Enter an API key."
        status = 401
    response = render(
        request,
        portal,
        "login.html",
        status,
        csrf_token=codec.csrf_token(session),
        next=target,
        error=error,
        signed_out=False,
        sso=st.oidc is not None,
    )
    set_session_cookie(response, request, st, codec, session)
    return response


@router.post("/logout")
async def logout(page: SessionActionDep) -> Response:
    response = RedirectResponse("/login?signed_out=1", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
