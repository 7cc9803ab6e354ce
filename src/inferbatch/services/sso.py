"""Single sign-on: who a verified OpenID Connect token is, and what they may act as.

A token's ``sub`` finds (or makes) one user, whatever their name or email became at the
provider. Each portal sign-in and each API request with an access token applies
``INFERBATCH_OIDC_ROLE_MAP`` to the token's groups: memberships the map grants are added
or given their new role, those it granted before and grants no more are removed (with the
user's keys of those projects), hand-made ones are left alone, and the user's admin flag
follows the map. Nothing is written when nothing changed, so a busy token costs three
indexed reads a request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from inferbatch.config import Settings
from inferbatch.db import projects as project_rows
from inferbatch.db import sso as rows
from inferbatch.db import users
from inferbatch.db.types import Conn
from inferbatch.domain import DEFAULT_PROJECT_ID, Principal, Role, User
from inferbatch.errors import InvalidRequest, Unauthorized
from inferbatch.oidc import groups_of, higher_role, mapped_roles

log = logging.getLogger(__name__)

PROJECT_HEADER = "openai-project"
"""Names the project an access token acts in (OpenAI's SDKs send it for ``project=``)."""


def display_name(claims: Mapping[str, Any]) -> str:
    """The name a new user gets: the token's email, preferred username, name, or subject."""
    for claim in ("email", "preferred_username", "name"):
        value = claims.get(claim)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return str(claims["sub"])


async def sign_in(
    conn: Conn, settings: Settings, claims: Mapping[str, Any], now: datetime
) -> tuple[User, list[rows.Membership]]:
    """The user of verified token ``claims`` with the role map applied, and their
    memberships of active projects afterwards."""
    subject = str(claims["sub"])
    mapped = mapped_roles(settings.oidc_role_map, groups_of(claims, settings.oidc_groups_claim))
    user = await rows.user_by_subject(conn, subject)
    if user is None:
        user = await rows.insert_user(conn, subject, display_name(claims), is_admin=mapped.is_admin)
    elif user.is_admin != mapped.is_admin:
        await rows.set_admin(conn, user.id, mapped.is_admin)
        user = replace(user, is_admin=mapped.is_admin)
    current = await rows.memberships(conn, user.id)
    if await _apply(conn, user.id, mapped.projects, current, now):
        current = await rows.memberships(conn, user.id)
    return user, current


async def _apply(
    conn: Conn,
    user_id: str,
    mapped: dict[str, Role],
    current: list[rows.Membership],
    now: datetime,
) -> bool:
    """Bring the user's map-made memberships in line with ``mapped`` (project id or name
    to role); whether anything changed."""
    found = await rows.resolve_projects(conn, list(mapped)) if mapped else {}
    for ref in mapped.keys() - found.keys():
        log.warning("INFERBATCH_OIDC_ROLE_MAP names project %r, which does not exist", ref)
    wanted: dict[str, Role] = {}
    for ref, project_id in found.items():
        wanted[project_id] = higher_role(mapped[ref], wanted.get(project_id))
    have = {m.project_id: m for m in current}
    changed = False
    for project_id, role in wanted.items():
        member = have.get(project_id)
        if member is None or (member.source == "oidc" and member.role != role):
            changed |= await rows.grant(conn, project_id, user_id, role, now)
    for project_id, member in have.items():
        if member.source == "oidc" and project_id not in wanted:
            changed |= await rows.revoke(conn, project_id, user_id, now)
    return changed


def acting_as(user: User, member: rows.Membership | None, project_id: str) -> Principal:
    """The principal of a signed-in user in ``project_id`` (an admin who is no member acts
    as an owner, as an admin's key does)."""
    role: Role = member.role if member is not None else "owner"
    return Principal.of_user(user, project_id, role=role)


async def session_principal(conn: Conn, user_id: str, project_id: str) -> Principal | None:
    """What a single sign-on portal session acts as now; None once the user is gone or no
    longer a member of the session's project (the session ends with the membership)."""
    user = await users.user_by_id(conn, user_id)
    if user is None:
        return None
    member = next(
        (m for m in await rows.memberships(conn, user_id) if m.project_id == project_id), None
    )
    if member is None and not (user.is_admin and await _active(conn, project_id)):
        return None
    return acting_as(user, member, project_id)


async def _active(conn: Conn, project_id: str) -> bool:
    project = await project_rows.get_project(conn, project_id)
    return project is not None and project.archived_at is None


async def token_principal(
    conn: Conn,
    settings: Settings,
    claims: Mapping[str, Any],
    project: str | None,
    now: datetime,
) -> Principal:
    """The principal of an API request with a verified access token: its user in the
    project the ``OpenAI-Project`` header names, else in the user's only project."""
    user, members = await sign_in(conn, settings, claims, now)
    if project:
        member = next((m for m in members if m.project_id == project), None)
        if member is None and not (user.is_admin and await _active(conn, project)):
            raise Unauthorized(
                f"The user of this token is not a member of project {project!r}.",
                code="mismatched_project",
            )
        return acting_as(user, member, project)
    if len(members) == 1:
        return acting_as(user, members[0], members[0].project_id)
    if not members:
        if user.is_admin:
            return acting_as(user, None, DEFAULT_PROJECT_ID)
        raise Unauthorized(
            "The user of this token is a member of no project: the role map grants their "
            "groups none.",
            code="no_project",
        )
    raise InvalidRequest(
        "The user of this token is a member of several projects; name one in the "
        "OpenAI-Project header.",
        param="OpenAI-Project",
        code="project_required",
    )
