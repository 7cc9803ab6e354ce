"""Users who sign in with single sign-on, and the memberships the role map grants them.

Every function takes an open connection and never commits. A user is found by the
provider's subject (``users.oidc_subject``); memberships the role map made carry
``source = 'oidc'``, and only those are changed or removed by :func:`grant` and
:func:`revoke` (a hand-made membership of the same user stays as it was made).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from inferbatch.db.types import Conn
from inferbatch.domain import Role, User
from inferbatch.ids import new_id


@dataclass(frozen=True, slots=True)
class Membership:
    """A user's membership of an active project."""

    project_id: str
    project_name: str
    role: Role
    source: str
    """``manual`` or ``oidc`` (granted by the role map)."""


async def user_by_subject(conn: Conn, subject: str) -> User | None:
    cur = await conn.execute(
        "SELECT id, name, is_admin FROM users WHERE oidc_subject = %s", (subject,)
    )
    row = await cur.fetchone()
    return User(**row) if row else None


INSERT_USER = """
INSERT INTO users (id, name, is_admin, oidc_subject) VALUES (%s, %s, %s, %s)
ON CONFLICT DO NOTHING
RETURNING id, name, is_admin
"""
"""A new single sign-on user; nothing when the subject or the name is taken."""


async def insert_user(conn: Conn, subject: str, name: str, *, is_admin: bool) -> User:
    """The user of ``subject``, made with ``name`` if new. A name another user holds gets
    a suffix from the subject: a sign-in never takes over a user it did not make."""
    suffix = hashlib.sha256(subject.encode()).hexdigest()[:8]
    for candidate in (name, f"{name} ({suffix})"):
        cur = await conn.execute(INSERT_USER, (new_id("user_"), candidate, is_admin, subject))
        row = await cur.fetchone()
        if row is not None:
            return User(**row)
        found = await user_by_subject(conn, subject)  # made by a concurrent sign-in
        if found is not None:
            return found
    raise RuntimeError(f"no free user name for {name!r}")


async def set_admin(conn: Conn, user_id: str, is_admin: bool) -> bool:
    """Make the user an admin or not; whether that changed anything."""
    cur = await conn.execute(
        "UPDATE users SET is_admin = %s WHERE id = %s AND is_admin <> %s",
        (is_admin, user_id, is_admin),
    )
    return cur.rowcount == 1


async def memberships(conn: Conn, user_id: str) -> list[Membership]:
    """The user's memberships of unarchived projects, by project name."""
    cur = await conn.execute(
        """
        SELECT m.project_id, p.name AS project_name, m.role, m.source
        FROM project_members m JOIN projects p ON p.id = m.project_id
        WHERE m.user_id = %s AND p.archived_at IS NULL
        ORDER BY p.name, p.id
        """,
        (user_id,),
    )
    return [Membership(**r) for r in await cur.fetchall()]


async def resolve_projects(conn: Conn, refs: list[str]) -> dict[str, str]:
    """The unarchived project each reference names, ``{ref: project id}``: a project with
    that id, else the oldest one with that name; references that name none are left out."""
    cur = await conn.execute(
        """
        SELECT DISTINCT ON (r.ref) r.ref, p.id
        FROM unnest(%s::text[]) AS r(ref)
        JOIN projects p ON (p.id = r.ref OR p.name = r.ref) AND p.archived_at IS NULL
        ORDER BY r.ref, p.id = r.ref DESC, p.created_at, p.id
        """,
        (refs,),
    )
    return {row["ref"]: row["id"] for row in await cur.fetchall()}


GRANT = """
INSERT INTO project_members (project_id, user_id, role, added_at, source)
VALUES (%s, %s, %s, %s, 'oidc')
ON CONFLICT (project_id, user_id) DO UPDATE SET role = EXCLUDED.role
WHERE project_members.source = 'oidc' AND project_members.role <> EXCLUDED.role
"""
"""Grant a mapped role: a new membership, or a new role of one the map made before."""


async def grant(conn: Conn, project_id: str, user_id: str, role: Role, now: datetime) -> bool:
    """Give the user ``role`` in the project by the map; whether anything changed."""
    cur = await conn.execute(GRANT, (project_id, user_id, role, now))
    return cur.rowcount == 1


async def revoke(conn: Conn, project_id: str, user_id: str, now: datetime) -> bool:
    """End a membership the map made (and the user's keys of that project); False when
    there is none or it was made by hand."""
    cur = await conn.execute(
        "DELETE FROM project_members WHERE project_id = %s AND user_id = %s AND source = 'oidc'",
        (project_id, user_id),
    )
    if cur.rowcount == 0:
        return False
    await conn.execute(
        "UPDATE api_keys SET revoked_at = %s "
        "WHERE project_id = %s AND user_id = %s AND revoked_at IS NULL",
        (now, project_id, user_id),
    )
    return True
