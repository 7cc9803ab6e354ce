"""Projects, their members, service accounts and keys, as the Administration API reads and
changes them. Every function takes an open connection and never commits; a change says in
its return value whether it happened. Lists are keyset pages of ``limit`` + 1 rows after a
cursor id (the caller tells from the extra row that there is more).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from inferbatch.db.types import Conn
from inferbatch.domain import Role


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    created_at: datetime
    archived_at: datetime | None
    weight: int = 1
    """Its share of the spot pool at equal priority (fair share, see
    :class:`inferbatch.db.requests.QueueCursor`)."""


@dataclass(frozen=True, slots=True)
class Member:
    """A user's membership of a project."""

    user_id: str
    name: str
    role: Role
    added_at: datetime


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    id: str
    project_id: str
    name: str
    role: Role
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key of a project as listed: never its value, only its prefix."""

    id: str
    project_id: str
    prefix: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    user_id: str | None
    user_name: str | None
    user_added_at: datetime | None
    user_role: Role | None
    service_account_id: str | None
    service_account_name: str | None
    service_account_role: Role | None
    service_account_created_at: datetime | None


# -- projects ---------------------------------------------------------------------------------

_PROJECT = "id, name, created_at, archived_at, weight"


async def insert_project(conn: Conn, project_id: str, name: str, now: datetime) -> Project:
    cur = await conn.execute(
        f"INSERT INTO projects (id, name, created_at) VALUES (%s, %s, %s) RETURNING {_PROJECT}",
        (project_id, name, now),
    )
    row = await cur.fetchone()
    assert row is not None
    return Project(**row)


async def get_project(conn: Conn, project_id: str) -> Project | None:
    cur = await conn.execute(f"SELECT {_PROJECT} FROM projects WHERE id = %s", (project_id,))
    row = await cur.fetchone()
    return Project(**row) if row else None


async def project_by_name(conn: Conn, name: str) -> Project | None:
    """The oldest unarchived project called ``name`` (names need not be unique)."""
    cur = await conn.execute(
        f"SELECT {_PROJECT} FROM projects WHERE name = %s AND archived_at IS NULL "
        "ORDER BY created_at, id LIMIT 1",
        (name,),
    )
    row = await cur.fetchone()
    return Project(**row) if row else None


async def list_projects(
    conn: Conn,
    *,
    after: str | None,
    limit: int,
    include_archived: bool,
    member: str | None = None,
) -> list[Project]:
    """Projects in creation order after the cursor; only those user ``member`` belongs to
    when it is given."""
    cur = await conn.execute(
        f"""
        SELECT {_PROJECT} FROM projects p
        WHERE (%(archived)s OR archived_at IS NULL)
          AND (%(member)s::text IS NULL OR EXISTS (
              SELECT 1 FROM project_members m
              WHERE m.project_id = p.id AND m.user_id = %(member)s))
          AND (%(after)s::text IS NULL OR (created_at, id) >
               (SELECT created_at, id FROM projects WHERE id = %(after)s))
        ORDER BY created_at, id LIMIT %(limit)s
        """,
        {"archived": include_archived, "member": member, "after": after, "limit": limit + 1},
    )
    return [Project(**r) for r in await cur.fetchall()]


async def update_project(
    conn: Conn, project_id: str, name: str | None, weight: int | None
) -> Project | None:
    """The project with the given fields changed (None: kept); None if there is none or it
    is archived."""
    cur = await conn.execute(
        f"""
        UPDATE projects SET name = coalesce(%s, name), weight = coalesce(%s, weight)
        WHERE id = %s AND archived_at IS NULL RETURNING {_PROJECT}
        """,
        (name, weight, project_id),
    )
    row = await cur.fetchone()
    return Project(**row) if row else None


async def archive_project(conn: Conn, project_id: str, now: datetime) -> Project | None:
    """The project, archived at ``now`` (or when it was archived before); None if none."""
    cur = await conn.execute(
        f"""
        UPDATE projects SET archived_at = coalesce(archived_at, %s) WHERE id = %s
        RETURNING {_PROJECT}
        """,
        (now, project_id),
    )
    row = await cur.fetchone()
    return Project(**row) if row else None


# -- members ----------------------------------------------------------------------------------

_MEMBER = "m.user_id, u.name, m.role, m.added_at"


async def list_members(
    conn: Conn, project_id: str, *, after: str | None, limit: int
) -> list[Member]:
    cur = await conn.execute(
        f"""
        SELECT {_MEMBER} FROM project_members m JOIN users u ON u.id = m.user_id
        WHERE m.project_id = %(project)s
          AND (%(after)s::text IS NULL OR (m.added_at, m.user_id) >
               (SELECT added_at, user_id FROM project_members
                WHERE project_id = %(project)s AND user_id = %(after)s))
        ORDER BY m.added_at, m.user_id LIMIT %(limit)s
        """,
        {"project": project_id, "after": after, "limit": limit + 1},
    )
    return [Member(**r) for r in await cur.fetchall()]


async def get_member(conn: Conn, project_id: str, user_id: str) -> Member | None:
    cur = await conn.execute(
        f"""
        SELECT {_MEMBER} FROM project_members m JOIN users u ON u.id = m.user_id
        WHERE m.project_id = %s AND m.user_id = %s
        """,
        (project_id, user_id),
    )
    row = await cur.fetchone()
    return Member(**row) if row else None


async def add_member(conn: Conn, project_id: str, user_id: str, role: Role, now: datetime) -> bool:
    """Make the user a member with ``role``; False (nothing changed) if already one."""
    cur = await conn.execute(
        """
        INSERT INTO project_members (project_id, user_id, role, added_at)
        VALUES (%s, %s, %s, %s) ON CONFLICT (project_id, user_id) DO NOTHING
        """,
        (project_id, user_id, role, now),
    )
    return cur.rowcount == 1


async def set_role(conn: Conn, project_id: str, user_id: str, role: Role) -> bool:
    cur = await conn.execute(
        "UPDATE project_members SET role = %s WHERE project_id = %s AND user_id = %s",
        (role, project_id, user_id),
    )
    return cur.rowcount == 1


async def remove_member(conn: Conn, project_id: str, user_id: str, now: datetime) -> bool:
    """Remove the user from the project and revoke their keys of it; False if the user
    was not a member."""
    cur = await conn.execute(
        "DELETE FROM project_members WHERE project_id = %s AND user_id = %s",
        (project_id, user_id),
    )
    if cur.rowcount == 0:
        return False
    await conn.execute(
        """
        UPDATE api_keys SET revoked_at = %s
        WHERE project_id = %s AND user_id = %s AND revoked_at IS NULL
        """,
        (now, project_id, user_id),
    )
    return True


# -- service accounts -------------------------------------------------------------------------

_ACCOUNT = "id, project_id, name, role, created_at"


async def insert_service_account(
    conn: Conn, account_id: str, project_id: str, name: str, role: Role, now: datetime
) -> ServiceAccount:
    cur = await conn.execute(
        f"""
        INSERT INTO service_accounts (id, project_id, name, role, created_at)
        VALUES (%s, %s, %s, %s, %s) RETURNING {_ACCOUNT}
        """,
        (account_id, project_id, name, role, now),
    )
    row = await cur.fetchone()
    assert row is not None
    return ServiceAccount(**row)


async def get_service_account(
    conn: Conn, project_id: str, account_id: str
) -> ServiceAccount | None:
    """The project's service account (not a deleted one)."""
    cur = await conn.execute(
        f"""
        SELECT {_ACCOUNT} FROM service_accounts
        WHERE id = %s AND project_id = %s AND deleted_at IS NULL
        """,
        (account_id, project_id),
    )
    row = await cur.fetchone()
    return ServiceAccount(**row) if row else None


async def service_account_by_name(conn: Conn, project_id: str, name: str) -> ServiceAccount | None:
    cur = await conn.execute(
        f"""
        SELECT {_ACCOUNT} FROM service_accounts
        WHERE project_id = %s AND name = %s AND deleted_at IS NULL
        ORDER BY created_at, id LIMIT 1
        """,
        (project_id, name),
    )
    row = await cur.fetchone()
    return ServiceAccount(**row) if row else None


async def list_service_accounts(
    conn: Conn, project_id: str, *, after: str | None, limit: int
) -> list[ServiceAccount]:
    cur = await conn.execute(
        f"""
        SELECT {_ACCOUNT} FROM service_accounts
        WHERE project_id = %(project)s AND deleted_at IS NULL
          AND (%(after)s::text IS NULL OR (created_at, id) >
               (SELECT created_at, id FROM service_accounts WHERE id = %(after)s))
        ORDER BY created_at, id LIMIT %(limit)s
        """,
        {"project": project_id, "after": after, "limit": limit + 1},
    )
    return [ServiceAccount(**r) for r in await cur.fetchall()]


async def delete_service_account(
    conn: Conn, project_id: str, account_id: str, now: datetime
) -> bool:
    """Mark the service account deleted and revoke its keys; False if there is none."""
    cur = await conn.execute(
        """
        UPDATE service_accounts SET deleted_at = %s
        WHERE id = %s AND project_id = %s AND deleted_at IS NULL
        """,
        (now, account_id, project_id),
    )
    if cur.rowcount == 0:
        return False
    await conn.execute(
        "UPDATE api_keys SET revoked_at = %s WHERE service_account_id = %s AND revoked_at IS NULL",
        (now, account_id),
    )
    return True


# -- keys -------------------------------------------------------------------------------------

_KEY = """k.id, k.project_id, k.prefix, k.name, k.created_at, k.expires_at, k.last_used_at,
    k.revoked_at, u.id AS user_id, u.name AS user_name, m.added_at AS user_added_at,
    m.role AS user_role, s.id AS service_account_id, s.name AS service_account_name,
    s.role AS service_account_role, s.created_at AS service_account_created_at"""
_KEY_FROM = """api_keys k
    LEFT JOIN users u ON u.id = k.user_id
    LEFT JOIN project_members m ON m.project_id = k.project_id AND m.user_id = k.user_id
    LEFT JOIN service_accounts s ON s.id = k.service_account_id"""


async def list_keys(conn: Conn, project_id: str, *, after: str | None, limit: int) -> list[ApiKey]:
    """The project's keys that can still act (not revoked), oldest first."""
    params: dict[str, Any] = {"project": project_id, "after": after, "limit": limit + 1}
    cur = await conn.execute(
        f"""
        SELECT {_KEY} FROM {_KEY_FROM}
        WHERE k.project_id = %(project)s AND k.revoked_at IS NULL
          AND (%(after)s::text IS NULL OR (k.created_at, k.id) >
               (SELECT created_at, id FROM api_keys WHERE id = %(after)s))
        ORDER BY k.created_at, k.id LIMIT %(limit)s
        """,
        params,
    )
    return [ApiKey(**r) for r in await cur.fetchall()]


async def get_key(conn: Conn, project_id: str, key_id: str) -> ApiKey | None:
    """The project's key ``key_id`` (not a revoked one)."""
    cur = await conn.execute(
        f"""
        SELECT {_KEY} FROM {_KEY_FROM}
        WHERE k.id = %s AND k.project_id = %s AND k.revoked_at IS NULL
        """,
        (key_id, project_id),
    )
    row = await cur.fetchone()
    return ApiKey(**row) if row else None


async def key_by_prefix_or_id(conn: Conn, value: str) -> ApiKey | None:
    """An unrevoked key by its id, or by its prefix when exactly one key has it."""
    cur = await conn.execute(
        f"""
        SELECT {_KEY} FROM {_KEY_FROM}
        WHERE (k.id = %(v)s OR k.prefix = %(v)s) AND k.revoked_at IS NULL
        LIMIT 2
        """,
        {"v": value},
    )
    found = await cur.fetchall()
    return ApiKey(**found[0]) if len(found) == 1 else None


async def revoke_key(conn: Conn, key_id: str, now: datetime) -> bool:
    """Revoke the key at ``now``; False if it was revoked already or does not exist."""
    cur = await conn.execute(
        "UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
        (now, key_id),
    )
    return cur.rowcount == 1
