"""OpenID Connect: the provider's configuration and keys, ID-token and access-token checks,
PKCE, and the groups-to-roles map (``INFERBATCH_OIDC_ROLE_MAP``).

One :class:`OidcClient` per api process, made by the app when ``INFERBATCH_OIDC_ISSUER``
is set. It reads the provider's discovery document and JWKS when first needed (the api
starts while the provider is down) and keeps them for :data:`CACHE_SECONDS`. A token
signed with a key id the cached JWKS lacks fetches the JWKS again (the provider rotated
its keys), at most once per :data:`REFETCH_SECONDS`, so tokens with made-up key ids cannot
make the api hammer the provider. Signatures are RS256 or ES256 only; ``iss``, ``aud``,
``exp`` and ``sub`` are required, and ``exp``/``nbf`` allow :data:`LEEWAY_SECONDS` of
clock skew. The client secret is only ever sent to the token endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from inferbatch.config import Settings
from inferbatch.domain import ROLES, Role

ALGORITHMS = ["RS256", "ES256"]
LEEWAY_SECONDS = 60
CACHE_SECONDS = 3600.0
"""How long the discovery document and the JWKS are used before they are read again."""
REFETCH_SECONDS = 30.0
"""Least time between two JWKS fetches caused by an unknown key id."""
ADMIN = "admin"
ANY_PROJECT = "*"
"""The role map's project key for a deployment-wide grant: only ``{"*": "admin"}``."""

_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_RANK = {role: rank for rank, role in enumerate(reversed(ROLES))}


class OidcError(Exception):
    """The provider could not be used: discovery, JWKS or code exchange failed."""


class TokenRejected(Exception):
    """A token failed verification; ``str()`` says why, ``code`` names the reason."""

    def __init__(self, message: str, code: str = "invalid_token") -> None:
        super().__init__(message)
        self.code = code


def looks_like_jwt(value: str) -> bool:
    """Whether a bearer value is a compact JWS (three base64url parts), not an API key."""
    return _JWT.match(value) is not None


def new_verifier() -> str:
    """A PKCE code verifier (RFC 7636: 43 to 128 unreserved characters)."""
    return secrets.token_urlsafe(48)


def challenge_of(verifier: str) -> str:
    """The S256 code challenge of ``verifier``."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# -- the role map -----------------------------------------------------------------------------


def check_role_map(role_map: Mapping[str, Mapping[str, str]]) -> None:
    """Raise ValueError naming the first entry of ``INFERBATCH_OIDC_ROLE_MAP`` that is not
    ``{group: {project id or name: owner|member|reader}}`` or ``{group: {"*": "admin"}}``."""
    for group, grants in role_map.items():
        if not group:
            raise ValueError("INFERBATCH_OIDC_ROLE_MAP: a group name is empty")
        for project, role in grants.items():
            where = f"INFERBATCH_OIDC_ROLE_MAP[{group!r}][{project!r}]"
            if project == ANY_PROJECT:
                if role != ADMIN:
                    raise ValueError(f'{where}: "*" only takes "admin", not {role!r}')
            elif role == ADMIN:
                raise ValueError(f'{where}: "admin" is deployment-wide; write {{"*": "admin"}}')
            elif role not in ROLES:
                raise ValueError(f"{where}: unknown role {role!r}; use {', '.join(ROLES)}")
            elif not project:
                raise ValueError(f"{where}: the project id or name is empty")


def higher_role(role: Role, other: Role | None) -> Role:
    """The higher of two roles (reader < member < owner): a user mapped into one project
    twice gets the higher."""
    return role if other is None or _RANK[role] > _RANK[other] else other


@dataclass(frozen=True, slots=True)
class MappedRoles:
    """What a user's groups grant: admin or not, and a role per project (id or name)."""

    is_admin: bool
    projects: dict[str, Role]


def mapped_roles(role_map: Mapping[str, Mapping[str, str]], groups: list[str]) -> MappedRoles:
    """Apply the (checked) role map to a user's groups."""
    is_admin = False
    projects: dict[str, Role] = {}
    for group in groups:
        for project, role in role_map.get(group, {}).items():
            if project == ANY_PROJECT:
                is_admin = True
                continue
            assert role in ROLES
            projects[project] = higher_role(role, projects.get(project))
    return MappedRoles(is_admin, projects)


def groups_of(claims: Mapping[str, Any], claim: str) -> list[str]:
    """The groups a token's claims list (a list of strings, or one string); none if absent."""
    value = claims.get(claim)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [g for g in value if isinstance(g, str)]
    return []


# -- the provider -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Discovery:
    """The parts of the provider's ``/.well-known/openid-configuration`` used here."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


class OidcClient:
    """The relying party: discovery, keys, the authorization request, the code exchange
    and token verification against one provider."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert settings.oidc_issuer and settings.oidc_client_id
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.client_id = settings.oidc_client_id
        self.audience = settings.oidc_token_audience or self.client_id
        self.scopes = settings.oidc_scopes
        self._secret = settings.oidc_client_secret
        self._http = http or httpx.AsyncClient(timeout=10.0)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._discovery: tuple[float, Discovery] | None = None
        self._keys: tuple[float, KeySet] | None = None
        self._refetched_at = -REFETCH_SECONDS

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            answer = await self._http.get(url)
            answer.raise_for_status()
            data = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(f"reading {url} failed: {exc}") from exc
        if not isinstance(data, dict):
            raise OidcError(f"{url} did not answer a JSON object")
        return data

    async def discovery(self) -> Discovery:
        """The provider's configuration (cached); OidcError if it cannot be read or its
        issuer is not the configured one."""
        now = self._clock()
        if self._discovery is not None and now - self._discovery[0] < CACHE_SECONDS:
            return self._discovery[1]
        async with self._lock:
            if self._discovery is not None and now - self._discovery[0] < CACHE_SECONDS:
                return self._discovery[1]
            data = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
            try:
                found = Discovery(
                    issuer=str(data["issuer"]),
                    authorization_endpoint=str(data["authorization_endpoint"]),
                    token_endpoint=str(data["token_endpoint"]),
                    jwks_uri=str(data["jwks_uri"]),
                )
            except KeyError as exc:
                raise OidcError(f"the provider's configuration lacks {exc}") from exc
            if found.issuer.rstrip("/") != self.issuer:
                raise OidcError(
                    f"the provider says its issuer is {found.issuer!r}, not {self.issuer!r}"
                )
            self._discovery = (self._clock(), found)
            return found

    async def _key_set(self, *, refetch: bool = False) -> KeySet:
        now = self._clock()
        if refetch:
            if now - self._refetched_at < REFETCH_SECONDS and self._keys is not None:
                return self._keys[1]
            self._refetched_at = now
        elif self._keys is not None and now - self._keys[0] < CACHE_SECONDS:
            return self._keys[1]
        discovery = await self.discovery()
        data = await self._get_json(discovery.jwks_uri)
        try:
            keys = KeySet.import_key_set(data)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise OidcError(f"the provider's JWKS is not valid: {exc}") from exc
        self._keys = (self._clock(), keys)
        return keys

    async def authorization_url(
        self, redirect_uri: str, state: str, nonce: str, verifier: str
    ) -> str:
        """Where to send the browser: the code flow with PKCE (S256), state and nonce."""
        discovery = await self.discovery()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge_of(verifier),
                "code_challenge_method": "S256",
            }
        )
        sep = "&" if "?" in discovery.authorization_endpoint else "?"
        return f"{discovery.authorization_endpoint}{sep}{query}"

    async def exchange_code(self, code: str, redirect_uri: str, verifier: str) -> dict[str, Any]:
        """The token endpoint's answer for an authorization code; OidcError if refused."""
        discovery = await self.discovery()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": self.client_id,
        }
        # a confidential client authenticates with HTTP Basic (client_secret_basic)
        auth: httpx.Auth = httpx.Auth()  # no authentication: a public client
        if self._secret is not None:
            auth = httpx.BasicAuth(self.client_id, self._secret.get_secret_value())
        try:
            answer = await self._http.post(discovery.token_endpoint, data=form, auth=auth)
            data = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(f"the token request failed: {exc}") from exc
        if answer.status_code != 200 or not isinstance(data, dict):
            reason = data.get("error_description") or data.get("error") if data else None
            raise OidcError(f"the provider refused the code ({answer.status_code}): {reason}")
        return data

    async def verify_id_token(self, token: str, nonce: str) -> dict[str, Any]:
        """The claims of an ID token for this client, issued for ``nonce``."""
        return await self._verify(token, self.client_id, nonce)

    async def verify_access_token(self, token: str) -> dict[str, Any]:
        """The claims of an access token for the API's audience."""
        return await self._verify(token, self.audience, None)

    async def _verify(self, token: str, audience: str, nonce: str | None) -> dict[str, Any]:
        if not looks_like_jwt(token):
            raise TokenRejected("The token is not a JWT.")
        keys = await self._key_set()
        try:
            try:
                decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
            except InvalidKeyIdError:
                decoded = jwt.decode(
                    token, await self._key_set(refetch=True), algorithms=ALGORITHMS
                )
        except InvalidKeyIdError as exc:
            raise TokenRejected(
                "The token is signed with a key the provider does not list."
            ) from exc
        except (JoseError, ValueError) as exc:
            raise TokenRejected(f"The token's signature is not valid ({exc}).") from exc
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": self.issuer},
            "aud": {"essential": True, "value": audience},
            "exp": {"essential": True},
            "sub": {"essential": True},
        }
        if nonce is not None:
            options["nonce"] = {"essential": True, "value": nonce}
        registry = jwt.JWTClaimsRegistry(leeway=LEEWAY_SECONDS, **options)
        claims = dict(decoded.claims)
        # a provider may write its issuer with a trailing slash
        if isinstance(claims.get("iss"), str):
            claims["iss"] = claims["iss"].rstrip("/")
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise TokenRejected("The token has expired.", code="token_expired") from exc
        except JoseError as exc:
            raise TokenRejected(f"The token is not valid here: {exc}.") from exc
        return claims
