"""The pure parts of single sign-on: the role map's checks and its application to groups,
PKCE's S256 challenge, telling a JWT from an API key, and the settings' checks."""

from __future__ import annotations

import pydantic
import pytest

from inferbatch.config import Settings
from inferbatch.oidc import (
    MappedRoles,
    challenge_of,
    check_role_map,
    groups_of,
    looks_like_jwt,
    mapped_roles,
)

pytestmark = pytest.mark.unit


def test_pkce_challenge_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert challenge_of(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_a_jwt_is_told_from_an_api_key() -> None:
    assert looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
    assert not looks_like_jwt("ib-AbCdEf_12345")
    assert not looks_like_jwt("a.b")
    assert not looks_like_jwt("a.b.c.d")


@pytest.mark.parametrize(
    ("role_map", "says"),
    [
        ({"g": {"proj_a": "boss"}}, "unknown role 'boss'"),
        ({"g": {"*": "member"}}, '"*" only takes "admin"'),
        ({"g": {"proj_a": "admin"}}, '{"*": "admin"}'),
        ({"": {"proj_a": "member"}}, "group name is empty"),
    ],
)
def test_a_bad_role_map_is_refused_naming_the_entry(
    role_map: dict[str, dict[str, str]], says: str
) -> None:
    with pytest.raises(ValueError, match="INFERBATCH_OIDC_ROLE_MAP") as refused:
        check_role_map(role_map)
    assert says in str(refused.value)


def test_groups_map_to_the_highest_role_of_each_project() -> None:
    role_map = {
        "readers": {"proj_a": "reader", "Beta": "reader"},
        "writers": {"proj_a": "member"},
        "admins": {"*": "admin"},
    }
    assert mapped_roles(role_map, ["readers", "writers", "other"]) == MappedRoles(
        False, {"proj_a": "member", "Beta": "reader"}
    )
    assert mapped_roles(role_map, ["admins"]) == MappedRoles(True, {})


def test_groups_claim_takes_a_list_or_one_string() -> None:
    assert groups_of({"groups": ["a", 3, "b"]}, "groups") == ["a", "b"]
    assert groups_of({"roles": "a"}, "roles") == ["a"]
    assert groups_of({}, "groups") == []


def test_settings_check_the_oidc_configuration_at_start() -> None:
    with pytest.raises(pydantic.ValidationError, match="INFERBATCH_OIDC_CLIENT_ID"):
        Settings(oidc_issuer="https://idp.example.com")
    with pytest.raises(pydantic.ValidationError, match="unknown role 'writer'"):
        Settings(
            oidc_issuer="https://idp.example.com",
            oidc_client_id="ib",
            oidc_role_map={"g": {"proj_a": "writer"}},
        )
    ok = Settings(
        oidc_issuer="https://idp.example.com", oidc_client_id="ib", oidc_client_secret="s3"
    )
    assert ok.oidc_token_audience == "ib"
    assert "s3" not in repr(ok)
