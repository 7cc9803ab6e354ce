"""Projects, their members, service accounts and keys: who a key acts as, and the work of
the Administration API (``/v1/organization/projects/...``).

Authentication reads the key and its holder on every request (no cache), so revoking a
key, removing a member or archiving a project applies to the very next request.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from inferbatch.db import projects as rows
from inferbatch.db import users
from inferbatch.db.types import Conn
from inferbatch.domain import DEFAULT_PROJECT_ID, ROLES, Principal, Role, may_manage
from inferbatch.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from inferbatch.ids import new_id
from inferbatch.protocol import admin as wire
from inferbatch.services.serialize import ts

LAST_USED_EVERY = timedelta(minutes=1)
"""How stale a key's ``last_used_at`` may get before a request writes it again."""


def principal_of(holder: users.KeyHolder, now: datetime) -> Principal:
    """What a stored key acts as at ``now``; Unauthorized (saying why) when it may not act:
    revoked, expired, of an archived project, or of a user no longer in the project or a
    deleted service account."""
    if holder.revoked_at is not None:
        raise Unauthorized("This API key was revoked.", code="api_key_revoked")
    if holder.expires_at is not None and holder.expires_at <= now:
        raise Unauthorized("This API key expired.", code="api_key_expired")
    if holder.project_archived_at is not None:
        raise Unauthorized("The project of this API key is archived.", code="project_archived")
    if holder.service_account_id is not None:
        if holder.service_account_deleted_at is not None:
            raise Unauthorized("The service account of this API key was deleted.")
        assert holder.service_account_role is not None
        return Principal(
            id=holder.service_account_id,
            name=holder.service_account_name or "",
            is_admin=False,
            project_id=holder.project_id,
            role=holder.service_account_role,
            key_id=holder.key_id,
            service_account=True,
        )
    assert holder.user_id is not None
    role = holder.member_role
    if role is None:
        if not holder.is_admin:
            raise Unauthorized("The user of this API key is not a member of its project.")
        role = "owner"
    return Principal(
        id=holder.user_id,
        name=holder.user_name or "",
        is_admin=holder.is_admin,
        project_id=holder.project_id,
        role=role,
        key_id=holder.key_id,
    )


async def authenticate(conn: Conn, key: str, now: datetime) -> Principal:
    """The principal of API key ``key`` (Unauthorized if unknown or not usable), recording
    its use at most once per :data:`LAST_USED_EVERY`."""
    holder = await users.key_holder(conn, key)
    if holder is None:
        raise Unauthorized("Incorrect API key provided.")
    principal = principal_of(holder, now)
    if holder.last_used_at is None or holder.last_used_at < now - LAST_USED_EVERY:
        await users.touch_key(conn, holder.key_id, now, LAST_USED_EVERY)
    return principal


async def session_principal(conn: Conn, key_id: str, now: datetime) -> Principal | None:
    """What the key a portal session signed in with acts as now; None once it may not act
    (revoked, expired, removed): the session ends with its key."""
    holder = await users.key_holder_by_id(conn, key_id)
    if holder is None:
        return None
    try:
        return principal_of(holder, now)
    except Unauthorized:
        return None


# -- the Administration API -------------------------------------------------------------------

MAX_PAGE = 100


def _role(value: str, param: str = "role") -> Role:
    if value not in ROLES:
        raise InvalidRequest(f"Unknown role {value!r}; use one of {', '.join(ROLES)}.", param=param)
    return value


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("This needs an admin API key.")


def _require_manager(principal: Principal, project_id: str) -> None:
    """Another project is not found (its ids say nothing to a key outside it); in the
    key's own project, only an owner manages."""
    if not principal.is_admin and project_id != principal.project_id:
        raise NotFound(f"No project with id {project_id!r}.")
    if not may_manage(principal, project_id):
        raise Forbidden("This needs an admin API key or a key of an owner of this project.")


def project_object(p: rows.Project) -> wire.Project:
    return wire.Project(
        id=p.id,
        name=p.name,
        created_at=_unix(p.created_at),
        archived_at=ts(p.archived_at),
        status="archived" if p.archived_at is not None else "active",
        weight=p.weight,
    )


def _unix(value: datetime) -> int:
    return int(value.timestamp())


def member_object(m: rows.Member) -> wire.ProjectUser:
    return wire.ProjectUser(id=m.user_id, name=m.name, role=m.role, added_at=_unix(m.added_at))


def account_object(a: rows.ServiceAccount) -> wire.ServiceAccount:
    return wire.ServiceAccount(id=a.id, name=a.name, role=a.role, created_at=_unix(a.created_at))


def key_object(k: rows.ApiKey) -> wire.ProjectApiKey:
    if k.service_account_id is not None:
        assert k.service_account_role is not None and k.service_account_created_at is not None
        owner = wire.ApiKeyOwner(
            type="service_account",
            service_account=wire.ServiceAccount(
                id=k.service_account_id,
                name=k.service_account_name or "",
                role=k.service_account_role,
                created_at=_unix(k.service_account_created_at),
            ),
        )
    else:
        assert k.user_id is not None
        owner = wire.ApiKeyOwner(
            type="user",
            user=wire.ProjectUser(
                id=k.user_id,
                name=k.user_name or "",
                # an admin's key in a project it is not a member of acts as an owner
                role=k.user_role or "owner",
                added_at=_unix(k.user_added_at or k.created_at),
            ),
        )
    return wire.ProjectApiKey(
        id=k.id,
        redacted_value=f"{k.prefix}...",
        name=k.name,
        created_at=_unix(k.created_at),
        last_used_at=ts(k.last_used_at),
        expires_at=ts(k.expires_at),
        owner=owner,
    )


async def _project(conn: Conn, project_id: str) -> rows.Project:
    project = await rows.get_project(conn, project_id)
    if project is None:
        raise NotFound(f"No project with id {project_id!r}.")
    return project


async def _managed(conn: Conn, principal: Principal, project_id: str) -> rows.Project:
    """The project ``principal`` may manage (Forbidden, or NotFound if there is none)."""
    _require_manager(principal, project_id)
    return await _project(conn, project_id)


async def _active_project(conn: Conn, project_id: str) -> rows.Project:
    project = await _project(conn, project_id)
    if project.archived_at is not None:
        raise InvalidRequest(f"Project {project_id!r} is archived and cannot be changed.")
    return project


async def list_projects(
    conn: Conn, principal: Principal, *, after: str | None, limit: int, include_archived: bool
) -> tuple[list[wire.Project], bool]:
    """Every project for admins; for anyone else, the projects their user belongs to."""
    member = None if principal.is_admin else principal.id
    if principal.service_account:
        found = [await _project(conn, principal.project_id)]
        return [project_object(p) for p in found], False
    found = await rows.list_projects(
        conn, after=after, limit=limit, include_archived=include_archived, member=member
    )
    return [project_object(p) for p in found[:limit]], len(found) > limit


async def create_project(
    conn: Conn, principal: Principal, name: str, now: datetime
) -> wire.Project:
    _require_admin(principal)
    return project_object(await rows.insert_project(conn, new_id("proj_"), name, now))


async def get_project(conn: Conn, principal: Principal, project_id: str) -> wire.Project:
    """A project: admins see any, others the one of their key."""
    if not principal.is_admin and principal.project_id != project_id:
        raise NotFound(f"No project with id {project_id!r}.")
    return project_object(await _project(conn, project_id))


async def modify_project(
    conn: Conn, principal: Principal, project_id: str, change: wire.ProjectUpdate
) -> wire.Project:
    """Rename a project (its managers) or set its fair-share weight (admins only)."""
    _require_manager(principal, project_id)
    if change.weight is not None:
        _require_admin(principal)
    await _active_project(conn, project_id)
    changed = await rows.update_project(conn, project_id, change.name, change.weight)
    if changed is None:
        raise NotFound(f"No project with id {project_id!r}.")
    return project_object(changed)


async def archive_project(
    conn: Conn, principal: Principal, project_id: str, now: datetime
) -> wire.Project:
    """Archive a project: its keys stop working at once, its objects stay."""
    _require_admin(principal)
    if project_id == DEFAULT_PROJECT_ID:
        raise InvalidRequest("The default project cannot be archived.")
    archived = await rows.archive_project(conn, project_id, now)
    if archived is None:
        raise NotFound(f"No project with id {project_id!r}.")
    return project_object(archived)


async def list_members(
    conn: Conn, principal: Principal, project_id: str, *, after: str | None, limit: int
) -> tuple[list[wire.ProjectUser], bool]:
    await _managed(conn, principal, project_id)
    found = await rows.list_members(conn, project_id, after=after, limit=limit)
    return [member_object(m) for m in found[:limit]], len(found) > limit


async def _member(conn: Conn, project_id: str, user_id: str) -> rows.Member:
    member = await rows.get_member(conn, project_id, user_id)
    if member is None:
        raise NotFound(f"No user with id {user_id!r} in project {project_id!r}.")
    return member


async def get_member(
    conn: Conn, principal: Principal, project_id: str, user_id: str
) -> wire.ProjectUser:
    await _managed(conn, principal, project_id)
    return member_object(await _member(conn, project_id, user_id))


async def add_member(
    conn: Conn, principal: Principal, project_id: str, user_id: str, role: str, now: datetime
) -> wire.ProjectUser:
    """Add an existing user to the project (Conflict if already a member)."""
    _require_manager(principal, project_id)
    checked = _role(role)
    await _active_project(conn, project_id)
    if await users.user_by_id(conn, user_id) is None:
        raise NotFound(f"No user with id {user_id!r}.", param="user_id")
    if not await rows.add_member(conn, project_id, user_id, checked, now):
        raise Conflict(f"User {user_id!r} is already a member of project {project_id!r}.")
    return member_object(await _member(conn, project_id, user_id))


async def set_role(
    conn: Conn, principal: Principal, project_id: str, user_id: str, role: str
) -> wire.ProjectUser:
    """Change a member's role; it applies to the member's next request."""
    _require_manager(principal, project_id)
    checked = _role(role)
    await _active_project(conn, project_id)
    if not await rows.set_role(conn, project_id, user_id, checked):
        raise NotFound(f"No user with id {user_id!r} in project {project_id!r}.")
    return member_object(await _member(conn, project_id, user_id))


async def remove_member(
    conn: Conn, principal: Principal, project_id: str, user_id: str, now: datetime
) -> wire.ProjectUserDeleted:
    """Remove a member; their keys of the project are revoked with it."""
    await _managed(conn, principal, project_id)
    if not await rows.remove_member(conn, project_id, user_id, now):
        raise NotFound(f"No user with id {user_id!r} in project {project_id!r}.")
    return wire.ProjectUserDeleted(id=user_id)


async def list_keys(
    conn: Conn, principal: Principal, project_id: str, *, after: str | None, limit: int
) -> tuple[list[wire.ProjectApiKey], bool]:
    await _managed(conn, principal, project_id)
    found = await rows.list_keys(conn, project_id, after=after, limit=limit)
    return [key_object(k) for k in found[:limit]], len(found) > limit


async def get_key(
    conn: Conn, principal: Principal, project_id: str, key_id: str
) -> wire.ProjectApiKey:
    await _managed(conn, principal, project_id)
    key = await rows.get_key(conn, project_id, key_id)
    if key is None:
        raise NotFound(f"No API key with id {key_id!r} in project {project_id!r}.")
    return key_object(key)


async def revoke_key(
    conn: Conn, principal: Principal, project_id: str, key_id: str, now: datetime
) -> wire.ProjectApiKeyDeleted:
    """Revoke a key: the next request with it is refused (401, "revoked")."""
    await _managed(conn, principal, project_id)
    if await rows.get_key(conn, project_id, key_id) is None:
        raise NotFound(f"No API key with id {key_id!r} in project {project_id!r}.")
    await rows.revoke_key(conn, key_id, now)
    return wire.ProjectApiKeyDeleted(id=key_id)


async def list_service_accounts(
    conn: Conn, principal: Principal, project_id: str, *, after: str | None, limit: int
) -> tuple[list[wire.ServiceAccount], bool]:
    await _managed(conn, principal, project_id)
    found = await rows.list_service_accounts(conn, project_id, after=after, limit=limit)
    return [account_object(a) for a in found[:limit]], len(found) > limit


async def get_service_account(
    conn: Conn, principal: Principal, project_id: str, account_id: str
) -> wire.ServiceAccount:
    await _managed(conn, principal, project_id)
    account = await rows.get_service_account(conn, project_id, account_id)
    if account is None:
        raise NotFound(f"No service account with id {account_id!r} in project {project_id!r}.")
    return account_object(account)


async def create_service_account(
    conn: Conn,
    principal: Principal,
    project_id: str,
    name: str,
    role: str,
    now: datetime,
    expires_at: datetime | None = None,
) -> wire.CreatedServiceAccount:
    """A new service account and its first key, whose value only this answer shows."""
    _require_manager(principal, project_id)
    checked = _role(role)
    await _active_project(conn, project_id)
    account = await rows.insert_service_account(
        conn, new_id("svc_acct_"), project_id, name, checked, now
    )
    value = users.generate_key()
    key_id = await users.insert_key(
        conn,
        value,
        project_id=project_id,
        service_account_id=account.id,
        name="Secret key",
        expires_at=expires_at,
    )
    assert key_id is not None  # a fresh random key
    return wire.CreatedServiceAccount(
        **account_object(account).model_dump(),
        api_key=wire.ServiceAccountApiKey(
            id=key_id, value=value, name="Secret key", created_at=_unix(now)
        ),
    )


async def delete_service_account(
    conn: Conn, principal: Principal, project_id: str, account_id: str, now: datetime
) -> wire.ServiceAccountDeleted:
    """Delete a service account; its keys are revoked with it."""
    await _managed(conn, principal, project_id)
    if not await rows.delete_service_account(conn, project_id, account_id, now):
        raise NotFound(f"No service account with id {account_id!r} in project {project_id!r}.")
    return wire.ServiceAccountDeleted(id=account_id)


# -- keys made outside the API (the CLI) ------------------------------------------------------


async def create_user_key(
    conn: Conn,
    project_id: str,
    user_id: str,
    *,
    name: str | None = None,
    expires_at: datetime | None = None,
    role: Role = "member",
) -> tuple[str, str]:
    """A new key of the user in the project, making the user a member with ``role`` if not
    one already: (key id, key value)."""
    await _active_project(conn, project_id)
    await conn.execute(users.ADD_MEMBER, (project_id, user_id, role))
    value = users.generate_key()
    key_id = await users.insert_key(
        conn, value, project_id=project_id, user_id=user_id, name=name, expires_at=expires_at
    )
    assert key_id is not None
    return key_id, value


async def create_service_account_key(
    conn: Conn,
    project_id: str,
    account_name: str,
    *,
    role: Role = "member",
    expires_at: datetime | None = None,
    now: datetime,
) -> tuple[str, str]:
    """A new key of the project's service account called ``account_name`` (made with
    ``role`` if there is none): (key id, key value)."""
    await _active_project(conn, project_id)
    account = await rows.service_account_by_name(conn, project_id, account_name)
    if account is None:
        account = await rows.insert_service_account(
            conn, new_id("svc_acct_"), project_id, account_name, role, now
        )
    value = users.generate_key()
    key_id = await users.insert_key(
        conn,
        value,
        project_id=project_id,
        service_account_id=account.id,
        name=account_name,
        expires_at=expires_at,
    )
    assert key_id is not None
    return key_id, value


async def resolve_project(conn: Conn, id_or_name: str) -> rows.Project:
    """A project by id, or else by name (the CLI accepts either)."""
    project = await rows.get_project(conn, id_or_name) or await rows.project_by_name(
        conn, id_or_name
    )
    if project is None:
        raise NotFound(f"No project {id_or_name!r}.")
    return project
