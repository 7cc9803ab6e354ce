"""Single sign-on end to end: a real OpenID Connect provider process (authlib's server,
tests/oidc_provider.py) and a real api process. The portal's sign-in is driven over HTTP
through both, following their redirects; API calls carry the provider's access tokens,
through the official ``openai`` SDK too. Nothing in inferbatch's token check is mocked."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import openai
import pytest

from inferbatch.oidc import challenge_of, new_verifier
from tests.helpers import chat_file
from tests.oidc_provider import RunningProvider, oidc_provider
from tests.stack import ADMIN_KEY, Stack

pytestmark = pytest.mark.e2e

ROLE_MAP = {
    "ml-team": {"Alpha": "member"},
    "ml-readers": {"Beta": "reader"},
    "ml-admins": {"*": "admin"},
}


@dataclass
class Sso:
    stack: Stack
    provider: RunningProvider
    projects: dict[str, str]
    """Project name -> id."""

    @property
    def callback(self) -> str:
        return self.stack.url + "/login/oidc/callback"

    def as_user(self, groups: list[str], sub: str = "user-1") -> None:
        """The user the provider signs in next, with these groups."""
        body = {"sub": sub, "name": "Ada", "email": f"{sub}@example.com", "groups": groups}
        httpx.post(self.provider.url("/test/user"), json=body).raise_for_status()

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        answer = httpx.request(
            method,
            f"{self.stack.url}/v1/organization/projects{path}",
            json=body,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    def members(self, project: str) -> dict[str, str]:
        found = self.admin("GET", f"/{self.projects[project]}/users")["data"]
        return {m["name"]: m["role"] for m in found}

    def tokens(self, verifier: str | None = None) -> httpx.Response:
        """The token endpoint's answer to a code flow run directly against the provider
        (as a command-line client would), sending ``verifier`` (default: the right one)."""
        right = new_verifier()
        query = {
            "response_type": "code",
            "client_id": self.provider.client_id,
            "redirect_uri": self.callback,
            "scope": "openid profile email",
            "state": "s",
            "nonce": new_verifier(),
            "code_challenge": challenge_of(right),
            "code_challenge_method": "S256",
        }
        sent = httpx.get(self.provider.url("/authorize"), params=query)
        assert sent.status_code == 302, sent.text
        code = parse_qs(urlparse(sent.headers["location"]).query)["code"][0]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.callback,
            "client_id": self.provider.client_id,
        }
        if verifier != "":
            form["code_verifier"] = verifier or right
        return httpx.post(self.provider.url("/token"), data=form)

    def access_token(self, groups: list[str], sub: str = "user-1") -> str:
        self.as_user(groups, sub)
        answer = self.tokens()
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["access_token"]
        return token

    def mint(self, **claims: Any) -> str:
        answer = httpx.post(self.provider.url("/test/mint"), json=claims)
        token: str = answer.json()["token"]
        return token

    def client(self, token: str, project: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.stack.url + "/v1",
            api_key=token,
            project=self.projects[project] if project else None,
            max_retries=0,
        )


@pytest.fixture
def sso(db_url: str, tmp_path: Path) -> Iterator[Sso]:
    stack = Stack(db_url, tmp_path)
    with oidc_provider(stack.url + "/login/oidc/callback", audience="inferbatch-api") as provider:
        stack.env.update(
            {
                "INFERBATCH_OIDC_ISSUER": provider.issuer,
                "INFERBATCH_OIDC_CLIENT_ID": provider.client_id,
                "INFERBATCH_OIDC_AUDIENCE": provider.audience,
                "INFERBATCH_OIDC_ROLE_MAP": json.dumps(ROLE_MAP),
            }
        )
        try:
            stack.start(spot=0, dedicated=0)
            found = Sso(stack, provider, {})
            for name in ("Alpha", "Beta", "Gamma"):
                found.projects[name] = found.admin("POST", "", {"name": name})["id"]
            yield found
        finally:
            stack.close()


def _portal_sign_in(sso: Sso, next_path: str = "/batches") -> tuple[httpx.Client, httpx.Response]:
    browser = httpx.Client(follow_redirects=True, timeout=30)
    login = browser.get(sso.stack.url + "/login")
    assert "Sign in with SSO" in login.text
    landed = browser.get(sso.stack.url + "/login/oidc", params={"next": next_path})
    return browser, landed


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def test_portal_signs_in_through_the_provider_and_maps_groups_to_roles(sso: Sso) -> None:
    sso.as_user(["ml-team"])
    browser, landed = _portal_sign_in(sso)
    assert landed.status_code == 200 and urlparse(str(landed.url)).path == "/batches"
    # the browser went to the provider's /authorize with PKCE, and came back
    hops = [urlparse(str(r.url)) for r in landed.history]
    authorize = next(h for h in hops if h.path == "/authorize")
    sent = parse_qs(authorize.query)
    assert sent["code_challenge_method"] == ["S256"] and sent["nonce"] and sent["state"]
    assert f"{sso.projects['Alpha']} · member" in landed.text
    assert sso.members("Alpha") == {"user-1@example.com": "member"}

    # signing out ends the session
    signed_out = browser.post(sso.stack.url + "/logout", data={"csrf_token": _csrf(landed)})
    assert urlparse(str(signed_out.url)).path == "/login"
    assert urlparse(str(browser.get(sso.stack.url + "/batches").url)).path == "/login"

    # a hand-made membership stays whatever the groups become
    sso.admin(
        "POST", f"/{sso.projects['Gamma']}/users", {"user_id": _user_id(sso), "role": "owner"}
    )
    sso.as_user(["ml-readers"])
    browser, landed = _portal_sign_in(sso)
    assert sso.members("Alpha") == {}  # the map no longer grants it: removed
    assert sso.members("Beta") == {"user-1@example.com": "reader"}
    assert sso.members("Gamma") == {"user-1@example.com": "owner"}
    # two projects: the picker comes first
    assert urlparse(str(landed.url)).path == "/project"
    assert sso.projects["Beta"] in landed.text and sso.projects["Gamma"] in landed.text
    chosen = browser.post(
        sso.stack.url + "/project",
        data={"csrf_token": _csrf(landed), "project_id": sso.projects["Beta"], "next": "/batches"},
    )
    assert f"{sso.projects['Beta']} · reader" in chosen.text
    # a reader's session may not change anything
    refused = browser.post(
        sso.stack.url + "/batches/batch_x/cancel", data={"csrf_token": _csrf(chosen)}
    )
    assert refused.status_code == 403
    # the audit log has each sign-in through the provider, the project choice and the
    # refused action, as the signed-in user
    logged = httpx.get(
        f"{sso.stack.url}/v1/organization/audit_logs",
        params={"actor_ids[]": _user_id_in(sso, "Beta"), "limit": 20},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert logged.status_code == 200, logged.text
    kinds = [(e["type"], e["actor"]["type"]) for e in logged.json()["data"]]
    assert kinds.count(("login.succeeded", "session")) == 2
    assert ("session.project_changed", "session") in kinds
    assert ("batch.cancelled", "session") in kinds


def _user_id_in(sso: Sso, project: str) -> str:
    found = sso.admin("GET", f"/{sso.projects[project]}/users")["data"]
    user_id: str = found[0]["id"]
    return user_id


def _user_id(sso: Sso) -> str:
    found = sso.admin("GET", f"/{sso.projects['Alpha']}/users")["data"]
    user_id: str = found[0]["id"]
    return user_id


def test_a_forged_state_or_a_refused_sign_in_does_not_sign_in(sso: Sso) -> None:
    browser = httpx.Client(follow_redirects=True, timeout=30)
    forged = browser.get(sso.stack.url + "/login/oidc/callback", params={"code": "x", "state": "y"})
    assert forged.status_code == 400 and "did not start here" in forged.text
    sso.as_user(["nobody"])
    _, landed = _portal_sign_in(sso)
    assert landed.status_code == 403 and "none of your groups" in landed.text


def test_the_provider_requires_pkce(sso: Sso) -> None:
    sso.as_user(["ml-team"])
    assert sso.tokens(verifier="").status_code == 400
    wrong = sso.tokens(verifier=new_verifier())
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert sso.tokens().status_code == 200


def test_api_access_tokens_act_as_the_mapped_user_in_their_project(sso: Sso) -> None:
    admin = sso.stack.client()
    keys = {}
    for name in ("Alpha", "Beta"):
        made = sso.admin(
            "POST", f"/{sso.projects[name]}/service_accounts", {"name": "svc", "role": "member"}
        )
        keys[name] = made["api_key"]["value"]
    made = {}
    for name, key in keys.items():
        client = sso.stack.client(key)
        uploaded = client.files.create(file=("in.jsonl", chat_file(1)), purpose="batch")
        made[name] = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
    assert {made["Alpha"], made["Beta"]} <= {b.id for b in admin.batches.list()}

    token = sso.access_token(["ml-team", "ml-readers"])
    alpha = sso.client(token, "Alpha")
    assert [b.id for b in alpha.batches.list()] == [made["Alpha"]]
    beta = sso.client(token, "Beta")
    assert [b.id for b in beta.batches.list()] == [made["Beta"]]
    with pytest.raises(openai.PermissionDeniedError):  # a reader in Beta
        beta.batches.cancel(made["Beta"])
    with pytest.raises(openai.NotFoundError):  # Beta's batch is not Alpha's
        alpha.batches.retrieve(made["Beta"])
    with pytest.raises(openai.BadRequestError) as several:
        sso.client(token).batches.list()
    assert several.value.code == "project_required"
    with pytest.raises(openai.AuthenticationError) as stranger:
        sso.client(token, "Gamma").batches.list()
    assert stranger.value.code == "mismatched_project"

    only_alpha = sso.access_token(["ml-team"], sub="user-2")
    assert [b.id for b in sso.client(only_alpha).batches.list()] == [made["Alpha"]]

    # the provider rotates its key: a token with the new key id fetches the JWKS again
    httpx.post(sso.provider.url("/test/rotate")).raise_for_status()
    rotated = sso.access_token(["ml-team"], sub="user-2")
    assert [b.id for b in sso.client(rotated).batches.list()] == [made["Alpha"]]


def _refusal(sso: Sso, token: str) -> dict[str, Any]:
    answer = httpx.get(
        sso.stack.url + "/v1/batches",
        headers={"authorization": f"Bearer {token}", "openai-project": sso.projects["Alpha"]},
    )
    assert answer.status_code == 401, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_invalid_expired_and_wrong_audience_tokens_are_refused(sso: Sso) -> None:
    now = int(time.time())
    good = {"iss": sso.provider.issuer, "sub": "user-1", "groups": ["ml-team"]}
    valid = sso.mint(**good, aud=sso.provider.audience, exp=now + 600)
    assert (
        httpx.get(
            sso.stack.url + "/v1/batches",
            headers={"authorization": f"Bearer {valid}", "openai-project": sso.projects["Alpha"]},
        ).status_code
        == 200
    )

    expired = sso.mint(**good, aud=sso.provider.audience, exp=now - 3600)
    assert _refusal(sso, expired)["code"] == "token_expired"
    wrong_audience = sso.mint(**good, aud="someone-else", exp=now + 600)
    assert "aud" in _refusal(sso, wrong_audience)["message"]
    wrong_issuer = sso.mint(
        **{**good, "iss": "http://elsewhere"}, aud=sso.provider.audience, exp=now + 600
    )
    assert _refusal(sso, wrong_issuer)["code"] == "invalid_token"

    # the same token with a payload that claims admin: the signature no longer holds
    header, payload, signature = valid.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["ml-admins"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert "signature" in _refusal(sso, f"{header}.{forged}.{signature}")["message"]
