"""``Idempotency-Key`` on creates (files, uploads, batches): a client that retries a create
after a timeout gets the object the first attempt made, never a second one.

The key is scoped to the caller and kept for :data:`KEY_LIFETIME`. A retry must be the
same request (same route, same body: compared by a fingerprint); another request under a
used key is refused with a 409, since answering it with the first object would hide the
client's bug and making a new one would break the promise of the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from inferbatch.db import idempotency as key_rows
from inferbatch.db.types import Conn
from inferbatch.domain import Principal
from inferbatch.errors import Conflict, InvalidRequest

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
KEY_LIFETIME = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    key: str
    route: str
    fingerprint: str


def parse(value: str | None, route: str, *parts: bytes | str) -> IdempotencyKey | None:
    """The key sent for ``route`` (None without one); ``parts`` identify the request."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_KEY_LENGTH or not value.isascii() or not value.isprintable():
        raise InvalidRequest(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.", param=HEADER
        )
    return IdempotencyKey(value, route, fingerprint(*parts))


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


async def claim(
    conn: Conn, caller: Principal, key: IdempotencyKey | None, object_id: str, now: datetime
) -> str | None:
    """In the transaction that makes ``object_id``: None when it is to be made, or the id
    an earlier request of the same caller in the same project under the same key made
    (then make nothing). Conflict when the key was used for another request."""
    if key is None:
        return None
    earlier = await key_rows.claim(
        conn,
        caller.project_id,
        caller.id,
        key.key,
        route=key.route,
        fingerprint=key.fingerprint,
        object_id=object_id,
        expires_at=now + KEY_LIFETIME,
    )
    if earlier is None:
        return None
    if (earlier.route, earlier.fingerprint) != (key.route, key.fingerprint):
        raise Conflict(
            f"{HEADER} {key.key!r} was already used for a different request; send a new key "
            "for a new request.",
            param=HEADER,
            code="idempotency_key_reused",
        )
    return earlier.object_id
