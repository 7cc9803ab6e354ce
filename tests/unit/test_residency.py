"""Data residency rules: allowed-location lists, their canonical form, matching, and how a
batch create accepts them."""

from __future__ import annotations

import pytest

from inferbatch import residency
from inferbatch.config import Settings
from inferbatch.errors import InvalidRequest
from inferbatch.services.batches import new_batch

pytestmark = pytest.mark.unit


def test_a_list_is_sorted_and_distinct() -> None:
    assert residency.parse(" eu-west-1a,eu-*,eu-west-1a ") == ("eu-*", "eu-west-1a")


@pytest.mark.parametrize("bad", ["", "*", "EU-west-1", "eu_west", "eu-*-a", "e%", ","])
def test_bad_entries_are_refused(bad: str) -> None:
    with pytest.raises(residency.BadLocations):
        residency.parse(bad)


@pytest.mark.parametrize(
    ("allowed", "location", "expected"),
    [
        (None, None, True),
        (None, "us-east-1a", True),
        (("eu-*",), None, False),
        (("eu-*",), "eu-west-1a", True),
        (("eu-*",), "us-east-1a", False),
        (("eu-west-1",), "eu-west-1a", False),
        (("eu-west-1*",), "eu-west-1a", True),
        (("us-east-1a", "eu-central-1"), "eu-central-1", True),
    ],
)
def test_a_location_is_allowed_by_a_name_or_a_prefix(
    allowed: tuple[str, ...] | None, location: str | None, expected: bool
) -> None:
    assert residency.allows(allowed, location) is expected


def _create(**kw: object) -> dict[str, str] | None:
    new = new_batch(
        Settings(),
        input_file_id="file-x",
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **kw,  # type: ignore[arg-type]
    )
    return new.metadata


def test_the_extension_field_lands_in_the_metadata_canonically() -> None:
    got = _create(metadata={"priority": "5"}, allowed_locations=["eu-west-1a", "eu-*"])
    assert got == {"priority": "5", "allowed_locations": "eu-*,eu-west-1a"}
    # the metadata form is kept as the user wrote it (ingest canonicalizes)
    assert _create(metadata={"allowed_locations": "eu-b,eu-a"}) == {
        "allowed_locations": "eu-b,eu-a"
    }


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"allowed_locations": []}, "allowed_locations"),
        ({"allowed_locations": ["*"]}, "allowed_locations"),
        ({"metadata": {"allowed_locations": "eu west"}}, "metadata.allowed_locations"),
        (
            {"metadata": {"allowed_locations": "us-east-1a"}, "allowed_locations": ["eu-*"]},
            "allowed_locations",
        ),
        (
            {"metadata": {f"k{i}": "v" for i in range(16)}, "allowed_locations": ["eu-*"]},
            "metadata",
        ),
    ],
)
def test_a_bad_restriction_is_refused_naming_the_field(kw: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _create(**kw)
    assert refused.value.param == param


def test_a_worker_location_must_be_a_plain_name() -> None:
    assert residency.valid_location("us-east-1a")
    assert not residency.valid_location("us-*")
    with pytest.raises(ValueError):
        Settings(location="us east")
