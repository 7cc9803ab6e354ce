"""A real OpenID Connect provider for tests, built on authlib's OAuth 2.0 / OIDC server
(authorization-code grant with OpenID Connect and PKCE required, RFC 9068 JWT access
tokens), in a Flask process of its own.

``python -m tests.oidc_provider --port N --client-id ID --redirect-uri URI --audience AUD``
serves discovery, JWKS (an RSA key made at start), ``/authorize`` (approves at once as
the current test user), ``/token``, and for tests only: ``POST /test/user`` (the user the
next ``/authorize`` signs in: ``{"sub", "name", "email", "groups"}``), ``POST /test/mint``
(a JWT of the given claims signed with the provider's key, for expired or wrong-audience
tokens) and ``POST /test/rotate`` (a new signing key, the old one still listed).

:func:`oidc_provider` starts it on a free port and stops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc.core import AuthorizationCodeMixin, UserInfo
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, jsonify, request
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from inferbatch.engines.local import free_port
from tests.stack import stop_process, wait_http


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str | None
    redirect_uri: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in scope.split() if s in {"openid", "profile", "email"})

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and secrets.compare_digest(
            client_secret, self.client_secret
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == ("none" if self.client_secret is None else "client_secret_basic")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class User:
    sub: str
    name: str
    email: str
    groups: list[str]

    def get_user_id(self) -> str:
        return self.sub


@dataclass
class Code(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: User
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class Provider:
    """The provider's state: its client, keys, codes and current user (one process)."""

    def __init__(self, issuer: str, client: Client, audience: str) -> None:
        self.issuer = issuer
        self.client = client
        self.audience = audience
        self.keys: list[RSAKey] = []
        self.codes: dict[str, Code] = {}
        self.user = User("user-1", "Ada Lovelace", "ada@example.com", [])
        self.rotate()

    def rotate(self) -> None:
        self.keys.append(RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(4)}))

    @property
    def key(self) -> RSAKey:
        return self.keys[-1]

    def jwks(self) -> dict[str, Any]:
        return KeySet(list(self.keys)).as_dict(private=False)

    def claims_of(self, user: User) -> dict[str, Any]:
        return {"name": user.name, "email": user.email, "groups": list(user.groups)}


def build_app(provider: Provider) -> Flask:
    app = Flask(__name__)

    class AccessTokens(JWTBearerTokenGenerator):  # type: ignore[misc]
        def get_jwks(self) -> KeySet:
            return KeySet([provider.key])

        def get_audiences(self, client: Client, user: User, scope: str) -> str:
            return provider.audience

        def get_extra_claims(
            self, client: Client, grant_type: str, user: User, scope: str
        ) -> dict[str, Any]:
            return provider.claims_of(user)

    class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["none", "client_secret_basic"]

        def save_authorization_code(self, code: str, req: Any) -> None:
            provider.codes[code] = Code(
                code=code,
                client_id=req.client.client_id,
                redirect_uri=req.payload.redirect_uri,
                scope=req.payload.scope,
                user=req.user,
                nonce=req.payload.data.get("nonce"),
                code_challenge=req.payload.data.get("code_challenge"),
                code_challenge_method=req.payload.data.get("code_challenge_method"),
            )

        def query_authorization_code(self, code: str, client: Client) -> Code | None:
            found = provider.codes.get(code)
            return found if found is not None and found.client_id == client.client_id else None

        def delete_authorization_code(self, authorization_code: Code) -> None:
            provider.codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: Code) -> User:
            return authorization_code.user

    class IdTokens(OpenIDCode):  # type: ignore[misc]
        def exists_nonce(self, nonce: str, req: Any) -> bool:
            return any(c.nonce == nonce for c in provider.codes.values())

        def resolve_client_private_key(self, client: Client) -> RSAKey:
            return provider.key

        def get_encode_header(self, client: Client) -> dict[str, str]:
            return {"alg": "RS256", "kid": provider.key.kid or ""}

        def get_client_claims(self, client: Client) -> dict[str, Any]:
            return {"iss": provider.issuer, "aud": [client.client_id]}

        def generate_user_info(self, user: User, scope: str) -> UserInfo:
            return UserInfo(sub=user.sub, **provider.claims_of(user))

    server = AuthorizationServer(
        app,
        query_client=lambda cid: provider.client if cid == provider.client.client_id else None,
        save_token=lambda token, req: None,
    )
    server.register_token_generator("default", AccessTokens(issuer=provider.issuer))
    server.register_grant(CodeGrant, [CodeChallenge(required=True), IdTokens(require_nonce=True)])

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Any:
        return jsonify(
            issuer=provider.issuer,
            authorization_endpoint=f"{provider.issuer}/authorize",
            token_endpoint=f"{provider.issuer}/token",
            jwks_uri=f"{provider.issuer}/jwks",
            response_types_supported=["code"],
            subject_types_supported=["public"],
            id_token_signing_alg_values_supported=["RS256"],
            code_challenge_methods_supported=["S256"],
        )

    @app.get("/jwks")
    def jwks() -> Any:
        return jsonify(provider.jwks())

    @app.get("/authorize")
    def authorize() -> Any:
        return server.create_authorization_response(grant_user=provider.user)

    @app.post("/token")
    def token() -> Any:
        return server.create_token_response()

    @app.post("/test/user")
    def set_user() -> Any:
        body = request.get_json()
        provider.user = User(body["sub"], body["name"], body["email"], list(body["groups"]))
        return jsonify(ok=True)

    @app.post("/test/mint")
    def mint() -> Any:
        claims = request.get_json()
        header = {"alg": "RS256", "kid": provider.key.kid or ""}
        return jsonify(token=jwt.encode(header, claims, provider.key))

    @app.post("/test/rotate")
    def rotate() -> Any:
        provider.rotate()
        return jsonify(kid=provider.key.kid)

    @app.get("/health")
    def health() -> Any:
        return jsonify(ok=True)

    return app


@dataclass
class RunningProvider:
    issuer: str
    client_id: str
    audience: str

    def url(self, path: str) -> str:
        return self.issuer + path


@contextmanager
def oidc_provider(
    redirect_uri: str,
    *,
    client_id: str = "inferbatch",
    client_secret: str | None = None,
    audience: str = "inferbatch-api",
) -> Iterator[RunningProvider]:
    """The provider in a subprocess on a free port, for one client and redirect URI."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "tests.oidc_provider",
        "--port",
        str(port),
        "--client-id",
        client_id,
        "--redirect-uri",
        redirect_uri,
        "--audience",
        audience,
    ]
    if client_secret is not None:
        args += ["--client-secret", client_secret]
    proc = subprocess.Popen(args)
    issuer = f"http://127.0.0.1:{port}"
    try:
        wait_http(issuer + "/health", proc=proc)
        yield RunningProvider(issuer, client_id, audience)
    finally:
        stop_process(proc, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret")
    parser.add_argument("--redirect-uri", required=True)
    parser.add_argument("--audience", required=True)
    args = parser.parse_args()
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # the tests serve plain http on loopback
    issuer = f"http://127.0.0.1:{args.port}"
    client = Client(args.client_id, args.client_secret, args.redirect_uri)
    app = build_app(Provider(issuer, client, args.audience))
    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
