"""Users and API keys. Keys are stored as SHA-256 digests, never in clear.

A key belongs to one project and to a user or a service account of it; what it resolves to
is read afresh on every request (:func:`key_holder`), so a revocation, an expiry or a role
change applies to the next request. ``last_used_at`` is written by :func:`touch_key` only
when the stored time is older than the interval the caller gives, so a busy key costs one
write a minute, not one per request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from inferbatch.db.types import Conn
from inferbatch.domain import DEFAULT_PROJECT_ID, Role, User
from inferbatch.ids import new_id


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def generate_key() -> str:
    return "ib-" + secrets.token_urlsafe(32)


def redacted(key: str) -> str:
    """How a key is shown after its creation: its first and last characters."""
    return f"{key[:7]}...{key[-4:]}"


async def ensure_user(conn: Conn, name: str, *, is_admin: bool) -> User:
    """Return the user called ``name``, creating it; an existing user is upgraded to admin
    when ``is_admin`` is true (never downgraded)."""
    cur = await conn.execute(
        """
        INSERT INTO users (id, name, is_admin) VALUES (%(id)s, %(name)s, %(admin)s)
        ON CONFLICT (name) DO UPDATE SET is_admin = users.is_admin OR EXCLUDED.is_admin
        RETURNING id, name, is_admin
        """,
        {"id": new_id("user_"), "name": name, "admin": is_admin},
    )
    row = await cur.fetchone()
    assert row is not None
    return User(**row)


async def user_by_id(conn: Conn, user_id: str) -> User | None:
    cur = await conn.execute("SELECT id, name, is_admin FROM users WHERE id = %s", (user_id,))
    row = await cur.fetchone()
    return User(**row) if row else None


async def user_by_name(conn: Conn, name: str) -> User | None:
    cur = await conn.execute("SELECT id, name, is_admin FROM users WHERE name = %s", (name,))
    row = await cur.fetchone()
    return User(**row) if row else None


INSERT_KEY = """
INSERT INTO api_keys (id, user_id, service_account_id, project_id, key_hash, prefix, name,
    expires_at)
VALUES (%(id)s, %(user)s, %(account)s, %(project)s, %(hash)s, %(prefix)s, %(name)s,
    %(expires)s)
ON CONFLICT (key_hash) DO NOTHING
RETURNING id
"""
"""A new key of a user or a service account in a project; nothing if the key exists."""


async def insert_key(
    conn: Conn,
    key: str,
    *,
    project_id: str,
    user_id: str | None = None,
    service_account_id: str | None = None,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> str | None:
    """Register ``key`` (exactly one of ``user_id`` and ``service_account_id``); its id, or
    None if that key already exists."""
    cur = await conn.execute(
        INSERT_KEY,
        {
            "id": new_id("key_"),
            "user": user_id,
            "account": service_account_id,
            "project": project_id,
            "hash": hash_key(key),
            "prefix": key[:7],
            "name": name,
            "expires": expires_at,
        },
    )
    row = await cur.fetchone()
    return str(row["id"]) if row else None


ADD_MEMBER = """
INSERT INTO project_members (project_id, user_id, role) VALUES (%s, %s, %s)
ON CONFLICT (project_id, user_id) DO NOTHING
"""
"""The user joins the project with a role, unless already a member (whose role stays)."""


async def add_key(
    conn: Conn,
    user_id: str,
    key: str,
    *,
    project_id: str = DEFAULT_PROJECT_ID,
    role: Role = "member",
) -> bool:
    """Register ``key`` for the user in ``project_id`` (the default project unless given),
    making the user a member with ``role`` if not one already; False if that key already
    exists."""
    await conn.execute(ADD_MEMBER, (project_id, user_id, role))
    return await insert_key(conn, key, project_id=project_id, user_id=user_id) is not None


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """A stored key and who holds it, as read for one request (checks not yet applied)."""

    key_id: str
    project_id: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    project_archived_at: datetime | None
    user_id: str | None
    user_name: str | None
    is_admin: bool
    member_role: Role | None
    """The user's role in the key's project; None for a service account's key, or once
    the user is no longer a member."""
    service_account_id: str | None
    service_account_name: str | None
    service_account_role: Role | None
    service_account_deleted_at: datetime | None


_KEY_HOLDER = """
SELECT k.id AS key_id, k.project_id, k.expires_at, k.revoked_at, k.last_used_at,
    p.archived_at AS project_archived_at,
    u.id AS user_id, u.name AS user_name, coalesce(u.is_admin, false) AS is_admin,
    m.role AS member_role,
    s.id AS service_account_id, s.name AS service_account_name,
    s.role AS service_account_role, s.deleted_at AS service_account_deleted_at
FROM api_keys k
JOIN projects p ON p.id = k.project_id
LEFT JOIN users u ON u.id = k.user_id
LEFT JOIN project_members m ON m.project_id = k.project_id AND m.user_id = k.user_id
LEFT JOIN service_accounts s ON s.id = k.service_account_id
WHERE k.{column} = %s
"""
"""A key by its digest or its id (both unique), with its project, user or service account
and the user's membership: one index probe per table."""
KEY_HOLDER = _KEY_HOLDER.format(column="key_hash")
KEY_HOLDER_BY_ID = _KEY_HOLDER.format(column="id")


async def key_holder(conn: Conn, key: str) -> KeyHolder | None:
    """The stored key ``key`` and its holder, revoked or expired ones too; None if unknown."""
    cur = await conn.execute(KEY_HOLDER, (hash_key(key),))
    row = await cur.fetchone()
    return KeyHolder(**row) if row else None


async def key_holder_by_id(conn: Conn, key_id: str) -> KeyHolder | None:
    """Like :func:`key_holder`, by the key's id (a portal session remembers the id)."""
    cur = await conn.execute(KEY_HOLDER_BY_ID, (key_id,))
    row = await cur.fetchone()
    return KeyHolder(**row) if row else None


TOUCH_KEY = """
UPDATE api_keys SET last_used_at = %(now)s
WHERE id = %(id)s AND (last_used_at IS NULL OR last_used_at < %(stale)s)
"""
"""Record a use of the key, unless one was recorded since ``stale`` (concurrent requests
of one key: the first writes, the others find it fresh and write nothing)."""


async def touch_key(conn: Conn, key_id: str, now: datetime, every: timedelta) -> bool:
    """Set the key's ``last_used_at`` to ``now`` if the stored one is older than ``every``;
    whether it was written."""
    cur = await conn.execute(TOUCH_KEY, {"id": key_id, "now": now, "stale": now - every})
    return cur.rowcount == 1
