"""Users and API keys. Keys are stored as SHA-256 digests, never in clear."""

from __future__ import annotations

import hashlib
import secrets

from inferbatch.db.types import Conn
from inferbatch.domain import User
from inferbatch.ids import new_id


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def generate_key() -> str:
    return "ib-" + secrets.token_urlsafe(32)


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


async def add_key(conn: Conn, user_id: str, key: str) -> bool:
    """Register ``key`` for the user; False if that key already exists."""
    cur = await conn.execute(
        """
        INSERT INTO api_keys (id, user_id, key_hash, prefix) VALUES (%s, %s, %s, %s)
        ON CONFLICT (key_hash) DO NOTHING
        """,
        (new_id("key_"), user_id, hash_key(key), key[:7]),
    )
    return cur.rowcount == 1


async def user_for_key(conn: Conn, key: str) -> User | None:
    """The owner of an unrevoked key, or None."""
    cur = await conn.execute(
        """
        SELECT u.id, u.name, u.is_admin FROM api_keys k JOIN users u ON u.id = k.user_id
        WHERE k.key_hash = %s AND k.revoked_at IS NULL
        """,
        (hash_key(key),),
    )
    row = await cur.fetchone()
    return User(**row) if row else None
