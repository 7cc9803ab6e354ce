"""Data residency: the locations a batch's requests may run in.

A batch names them in ``metadata.allowed_locations`` (a comma-separated list) or in the
create body's ``allowed_locations`` extension field (a list; it is stored in the metadata,
so a clone or a retry keeps it and ``GET /v1/batches/{id}`` shows it). Each entry is a
location as workers declare it (``eu-west-1a``, a zone, or ``eu-west-1``, a region) or a
prefix ending in ``*`` (``eu-*``, ``eu-west-1*``: every zone of that region). A worker whose
location matches no entry, and a worker that declared no location, never claims the
batch's requests; a batch without the key runs anywhere.

Names are lower-case letters, digits, ``-`` and ``.``: what cloud zones and regions use,
and nothing a pattern or SQL could read as a wildcard.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

METADATA_KEY = "allowed_locations"
MAX_ENTRIES = 32

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")


class BadLocations(ValueError):
    """What is wrong with an allowed-locations list (the message says)."""


def canonical(entries: Iterable[str]) -> tuple[str, ...]:
    """Validate a list of locations and prefixes; returns them sorted and distinct.
    Raises :class:`BadLocations` for an empty list, a bad name or a bare ``*``."""
    out: set[str] = set()
    for raw in entries:
        entry = raw.strip()
        name = entry[:-1] if entry.endswith("*") else entry
        if not _NAME.fullmatch(name):
            raise BadLocations(
                f"{entry!r} is not a location: use lower-case letters, digits, '-' and '.', "
                "optionally ending in '*' for a prefix (e.g. 'eu-*')."
            )
        out.add(entry)
    if not out:
        raise BadLocations("name at least one location, or leave the restriction out.")
    if len(out) > MAX_ENTRIES:
        raise BadLocations(f"at most {MAX_ENTRIES} locations.")
    return tuple(sorted(out))


def parse(value: str) -> tuple[str, ...]:
    """A comma-separated list (``metadata.allowed_locations``) in canonical form."""
    return canonical(value.split(","))


def from_metadata(metadata: Mapping[str, str] | None) -> tuple[str, ...] | None:
    """The canonical allowed locations of a batch's metadata; None: anywhere. The metadata
    was validated at create, so a bad value here is a bug and raises."""
    if not metadata or METADATA_KEY not in metadata:
        return None
    return parse(metadata[METADATA_KEY])


def allows(allowed: Iterable[str] | None, location: str | None) -> bool:
    """Whether a worker at ``location`` (None: undeclared) may run a request restricted to
    ``allowed`` (None: unrestricted). The claim statement applies the same rule in SQL."""
    if allowed is None:
        return True
    if location is None:
        return False
    return any(
        location.startswith(entry[:-1]) if entry.endswith("*") else location == entry
        for entry in allowed
    )


def valid_location(location: str) -> bool:
    """Whether ``location`` is a name a worker may declare (no ``*``)."""
    return _NAME.fullmatch(location) is not None
