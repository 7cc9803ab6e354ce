"""Portal sessions: a signed cookie, CSRF tokens bound to it, and one-shot flash messages.

The session cookie holds a random nonce and who signed in, signed with the deployment's
secret and time-stamped: the id of the API key the user signed in with (never the key
itself), or, after single sign-on, the user's id and the project the session acts in.
Every request re-reads the key's row or the user's membership, so revoking a key or
removing a member ends their portal sessions too. While a single sign-on is under way the
cookie also carries its ``state``, ``nonce`` and PKCE verifier, which the callback checks
and drops. CSRF tokens are an
HMAC of the session nonce: a page of this site can send one back, another site cannot read
it. The cookie is HttpOnly and SameSite=Lax, and Secure when the portal is served over
HTTPS.

The secret is ``INFERBATCH_SESSION_SECRET`` when set, else a random one stored once in the
database (``portal_secrets``), so every api replica signs and checks cookies alike.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from inferbatch.config import Settings
from inferbatch.db import browse
from inferbatch.db.types import Pool

SESSION_COOKIE = "inferbatch_session"
FLASH_COOKIE = "inferbatch_flash"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_MAX_AGE = 12 * 3600
"""Seconds a sign-in lasts; each page view re-issues nothing, so this is a hard limit."""
FLASH_MAX_AGE = 120


@dataclass(frozen=True, slots=True)
class SsoPending:
    """A single sign-on the browser was sent to the provider for."""

    state: str
    nonce: str
    verifier: str
    next: str
    """Where to go once signed in (a local path)."""


@dataclass(frozen=True, slots=True)
class Session:
    nonce: str
    key_id: str | None
    """None before sign-in (an anonymous session only carries the sign-in form's CSRF),
    and for a single sign-on session."""
    user_id: str | None = None
    """The user a single sign-on session acts as, in ``project_id``."""
    project_id: str | None = None
    pending: SsoPending | None = None

    @property
    def signed_in(self) -> bool:
        return self.key_id is not None or (self.user_id is not None and self.project_id is not None)


@dataclass(frozen=True, slots=True)
class Flash:
    level: str
    """A Bootstrap alert colour: success, danger, warning, info."""
    message: str


class SessionCodec:
    """Signs and checks session cookies, CSRF tokens and flash cookies with one secret."""

    def __init__(self, secret: bytes) -> None:
        self._session = URLSafeTimedSerializer(secret, salt="inferbatch.portal.session")
        self._flash = URLSafeTimedSerializer(secret, salt="inferbatch.portal.flash")
        self._csrf_key = hmac.new(secret, b"inferbatch.portal.csrf", hashlib.sha256).digest()

    @staticmethod
    def new(
        key_id: str | None = None,
        *,
        user_id: str | None = None,
        project_id: str | None = None,
        pending: SsoPending | None = None,
    ) -> Session:
        """A session with a fresh nonce (so a fresh CSRF token)."""
        return Session(secrets.token_urlsafe(18), key_id, user_id, project_id, pending)

    def dump(self, session: Session) -> str:
        data: dict[str, Any] = {"n": session.nonce, "k": session.key_id}
        if session.user_id is not None:
            data["u"], data["p"] = session.user_id, session.project_id
        if session.pending is not None:
            p = session.pending
            data["o"] = [p.state, p.nonce, p.verifier, p.next]
        return self._session.dumps(data)

    def load(self, value: str | None) -> Session | None:
        """The session in a cookie value; None if absent, forged or older than the limit."""
        if not value:
            return None
        try:
            data: Any = self._session.loads(value, max_age=SESSION_MAX_AGE)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("n"), str):
            return None
        pending = data.get("o")
        return Session(
            nonce=data["n"],
            key_id=_text(data.get("k")),
            user_id=_text(data.get("u")),
            project_id=_text(data.get("p")),
            pending=SsoPending(*pending)
            if isinstance(pending, list) and len(pending) == 4 and all(map(_text, pending))
            else None,
        )

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._csrf_key, session.nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), token or "")

    def dump_flash(self, flash: Flash) -> str:
        return self._flash.dumps([flash.level, flash.message])

    def load_flash(self, value: str | None) -> Flash | None:
        if not value:
            return None
        try:
            data: Any = self._flash.loads(value, max_age=FLASH_MAX_AGE)
        except BadSignature:
            return None
        if isinstance(data, list) and len(data) == 2 and all(isinstance(x, str) for x in data):
            return Flash(level=data[0], message=data[1])
        return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


async def load_secret(settings: Settings, db: Pool) -> bytes:
    """The signing secret: from the settings, else the one kept in the database."""
    if settings.session_secret:
        return hashlib.sha256(settings.session_secret.encode()).digest()
    async with db.connection() as conn:
        return await browse.signing_secret(conn, "session", secrets.token_bytes(32))
