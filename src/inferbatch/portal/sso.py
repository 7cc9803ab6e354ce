"""Signing in with single sign-on (OpenID Connect), and choosing the project a single
sign-on session acts in.

``GET /login/oidc`` sends the browser to the provider with the authorization-code flow:
PKCE (S256), a ``state`` and a ``nonce``, all three kept in the signed session cookie.
``GET /login/oidc/callback`` checks the state, exchanges the code with the verifier,
verifies the ID token (signature, issuer, audience, expiry, nonce), applies the role map
(services/sso.py) and signs in with a fresh session nonce, acting in the user's first
project; a user in several is shown the picker (``/project``) next.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import replace
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from inferbatch.api.deps import AppState, state
from inferbatch.db import projects as project_rows
from inferbatch.db import sso as sso_rows
from inferbatch.domain import DEFAULT_PROJECT_ID, Principal
from inferbatch.errors import NotFound
from inferbatch.oidc import OidcClient, OidcError, TokenRejected, new_verifier
from inferbatch.portal.auth import login_page, safe_next
from inferbatch.portal.session import SESSION_COOKIE, SessionCodec, SsoPending
from inferbatch.portal.web import (
    PageDep,
    PortalRoute,
    SessionActionDep,
    portal_of,
    set_session_cookie,
)
from inferbatch.services import audit, sso

log = logging.getLogger(__name__)

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

CALLBACK_PATH = "/login/oidc/callback"


def callback_url(request: Request, st: AppState) -> str:
    """The redirect URI to register at the provider: under INFERBATCH_PUBLIC_URL when set."""
    base = st.settings.public_url or str(request.base_url)
    return base.rstrip("/") + CALLBACK_PATH


def _client(st: AppState) -> OidcClient:
    if st.oidc is None:
        raise NotFound("Single sign-on is not configured.")
    return st.oidc


async def _refused(
    request: Request, codec: SessionCodec, status: int, error: str, target: str = "/"
) -> Response:
    """The sign-in page with ``error``, on a fresh anonymous session (the pending sign-in
    is dropped: it cannot be used twice)."""
    return login_page(request, codec, codec.new(), status, error, target)


@router.get("/login/oidc")
async def start(request: Request) -> Response:
    st = state(request)
    oidc = _client(st)
    codec = await portal_of(request).codec(st)
    pending = SsoPending(
        state=secrets.token_urlsafe(24),
        nonce=secrets.token_urlsafe(24),
        verifier=new_verifier(),
        next=safe_next(request.query_params.get("next")),
    )
    try:
        url = await oidc.authorization_url(
            callback_url(request, st), pending.state, pending.nonce, pending.verifier
        )
    except OidcError as exc:
        log.warning("single sign-on unavailable: %s", exc)
        return await _refused(
            request, codec, 503, "Single sign-on is unavailable right now; try again shortly."
        )
    response = RedirectResponse(url, status_code=303)
    set_session_cookie(response, request, st, codec, codec.new(pending=pending))
    return response


@router.get(CALLBACK_PATH)
async def callback(request: Request) -> Response:
    st = state(request)
    oidc = _client(st)
    codec = await portal_of(request).codec(st)
    session = codec.load(request.cookies.get(SESSION_COOKIE))
    pending = session.pending if session is not None else None
    query = request.query_params
    if pending is None or not hmac.compare_digest(pending.state, query.get("state", "")):
        return await _refused(
            request, codec, 400, "This single sign-on expired or did not start here. Try again."
        )
    if "error" in query or not query.get("code"):
        reason = query.get("error_description") or query.get("error") or "no code was given"
        return await _refused(request, codec, 401, f"The provider refused the sign-in: {reason}")
    try:
        claims = await _verified_claims(request, st, oidc, pending, query["code"])
    except (OidcError, TokenRejected) as exc:
        log.warning("single sign-on failed: %s", exc)
        return await _refused(request, codec, 401, f"Single sign-on failed: {exc}")
    async with st.db.unscoped() as conn:
        user, members = await sso.sign_in(conn, st.settings, claims, st.now())
    if members:
        project_id = members[0].project_id
    elif user.is_admin:
        project_id = DEFAULT_PROJECT_ID
    else:
        return await _refused(
            request,
            codec,
            403,
            f"You are signed in at the provider as {user.name}, but none of your groups "
            "is given a project here. Ask an administrator to map one in "
            "INFERBATCH_OIDC_ROLE_MAP.",
        )
    audit.note_actor(request.state, audit.Actor("session", Principal.of_user(user, project_id)))
    target = pending.next
    if len(members) > 1:
        target = "/project?next=" + quote(target, safe="")
    # A fresh nonce on sign-in: a session fixed before it is worth nothing after.
    signed_in = RedirectResponse(target, status_code=303)
    fresh = codec.new(user_id=user.id, project_id=project_id)
    set_session_cookie(signed_in, request, st, codec, fresh)
    return signed_in


async def _verified_claims(
    request: Request, st: AppState, oidc: OidcClient, pending: SsoPending, code: str
) -> dict[str, object]:
    tokens = await oidc.exchange_code(code, callback_url(request, st), pending.verifier)
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        raise OidcError("the provider answered no ID token (is the openid scope granted?)")
    return await oidc.verify_id_token(id_token, pending.nonce)


@router.get("/project")
async def picker(page: PageDep) -> Response:
    """The projects a single sign-on session may act in (every active one for admins)."""
    target = safe_next(page.request.query_params.get("next"))
    choices: list[tuple[str, str, str]] = []
    if page.session.user_id is not None:
        async with page.st.db.connection() as conn:
            members = await sso_rows.memberships(conn, page.session.user_id)
            choices = [(m.project_id, m.project_name, m.role) for m in members]
            if page.user.is_admin:
                every = await project_rows.list_projects(
                    conn, after=None, limit=100, include_archived=False
                )
                mine = {c[0] for c in choices}
                choices += [(p.id, p.name, "admin") for p in every if p.id not in mine]
    return page.render("project.html", choices=choices, next=target)


@router.post("/project")
async def choose(page: SessionActionDep) -> Response:
    form = await page.request.form()
    project_id = form.get("project_id")
    target = safe_next(form.get("next"))
    if page.session.user_id is None or not isinstance(project_id, str):
        raise NotFound("Only a single sign-on session chooses its project.")
    async with page.st.db.connection() as conn:
        acting = await sso.session_principal(conn, page.session.user_id, project_id)
    if acting is None:
        raise NotFound(f"You are not a member of project {project_id!r}.")
    response = RedirectResponse(target, status_code=303)
    moved = replace(page.session, project_id=project_id)
    set_session_cookie(response, page.request, page.st, page.codec, moved)
    return response
