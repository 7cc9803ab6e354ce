"""OpenAI's Administration API for projects: thin routes over
:mod:`inferbatch.services.projects`, typed by :mod:`inferbatch.protocol.admin`.

Admin keys may call every route; a key of a project owner may manage that project's users,
keys and service accounts. Every other key is refused (403).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from inferbatch.api.deps import AppState, authenticated, state
from inferbatch.domain import Principal
from inferbatch.protocol import admin as wire
from inferbatch.protocol.openai import ListPage
from inferbatch.services import projects as service
from inferbatch.services.serialize import page

router = APIRouter(prefix="/v1/organization/projects", tags=["administration"])

# Not the object routes' dependency: what a key may do here is the service's to decide
# (owners manage their project whatever the method).
PrincipalDep = Annotated[Principal, Depends(authenticated)]
StateDep = Annotated[AppState, Depends(state)]
After = Annotated[str | None, Query(description="The id of the last object of the page before.")]
Limit = Annotated[int, Query(ge=1, le=service.MAX_PAGE)]


# -- projects ---------------------------------------------------------------------------------


@router.get("", response_model=ListPage[wire.Project])
async def list_projects(
    who: PrincipalDep,
    st: StateDep,
    after: After = None,
    limit: Limit = 20,
    include_archived: bool = False,
) -> ListPage[Any]:
    async with st.db.connection() as conn:
        data, more = await service.list_projects(
            conn, who, after=after, limit=limit, include_archived=include_archived
        )
    return page(data, more)


@router.post("", response_model=wire.Project)
async def create_project(body: wire.ProjectCreate, who: PrincipalDep, st: StateDep) -> wire.Project:
    async with st.db.connection() as conn:
        return await service.create_project(conn, who, body.name, st.now())


@router.get("/{project_id}", response_model=wire.Project)
async def retrieve_project(project_id: str, who: PrincipalDep, st: StateDep) -> wire.Project:
    async with st.db.connection() as conn:
        return await service.get_project(conn, who, project_id)


@router.post("/{project_id}", response_model=wire.Project)
async def modify_project(
    project_id: str, body: wire.ProjectUpdate, who: PrincipalDep, st: StateDep
) -> wire.Project:
    async with st.db.connection() as conn:
        return await service.modify_project(conn, who, project_id, body)


@router.post("/{project_id}/archive", response_model=wire.Project)
async def archive_project(project_id: str, who: PrincipalDep, st: StateDep) -> wire.Project:
    async with st.db.connection() as conn:
        return await service.archive_project(conn, who, project_id, st.now())


# -- users ------------------------------------------------------------------------------------


@router.get("/{project_id}/users", response_model=ListPage[wire.ProjectUser])
async def list_project_users(
    project_id: str, who: PrincipalDep, st: StateDep, after: After = None, limit: Limit = 20
) -> ListPage[Any]:
    async with st.db.connection() as conn:
        data, more = await service.list_members(conn, who, project_id, after=after, limit=limit)
    return page(data, more)


@router.post("/{project_id}/users", response_model=wire.ProjectUser)
async def create_project_user(
    project_id: str, body: wire.ProjectUserCreate, who: PrincipalDep, st: StateDep
) -> wire.ProjectUser:
    async with st.db.connection() as conn:
        return await service.add_member(conn, who, project_id, body.user_id, body.role, st.now())


@router.get("/{project_id}/users/{user_id}", response_model=wire.ProjectUser)
async def retrieve_project_user(
    project_id: str, user_id: str, who: PrincipalDep, st: StateDep
) -> wire.ProjectUser:
    async with st.db.connection() as conn:
        return await service.get_member(conn, who, project_id, user_id)


@router.post("/{project_id}/users/{user_id}", response_model=wire.ProjectUser)
async def modify_project_user(
    project_id: str, user_id: str, body: wire.ProjectUserUpdate, who: PrincipalDep, st: StateDep
) -> wire.ProjectUser:
    async with st.db.connection() as conn:
        return await service.set_role(conn, who, project_id, user_id, body.role)


@router.delete("/{project_id}/users/{user_id}", response_model=wire.ProjectUserDeleted)
async def delete_project_user(
    project_id: str, user_id: str, who: PrincipalDep, st: StateDep
) -> wire.ProjectUserDeleted:
    async with st.db.connection() as conn:
        return await service.remove_member(conn, who, project_id, user_id, st.now())


# -- keys -------------------------------------------------------------------------------------


@router.get("/{project_id}/api_keys", response_model=ListPage[wire.ProjectApiKey])
async def list_project_api_keys(
    project_id: str, who: PrincipalDep, st: StateDep, after: After = None, limit: Limit = 20
) -> ListPage[Any]:
    async with st.db.connection() as conn:
        data, more = await service.list_keys(conn, who, project_id, after=after, limit=limit)
    return page(data, more)


@router.get("/{project_id}/api_keys/{key_id}", response_model=wire.ProjectApiKey)
async def retrieve_project_api_key(
    project_id: str, key_id: str, who: PrincipalDep, st: StateDep
) -> wire.ProjectApiKey:
    async with st.db.connection() as conn:
        return await service.get_key(conn, who, project_id, key_id)


@router.delete("/{project_id}/api_keys/{key_id}", response_model=wire.ProjectApiKeyDeleted)
async def delete_project_api_key(
    project_id: str, key_id: str, who: PrincipalDep, st: StateDep
) -> wire.ProjectApiKeyDeleted:
    async with st.db.connection() as conn:
        return await service.revoke_key(conn, who, project_id, key_id, st.now())


# -- service accounts -------------------------------------------------------------------------


@router.get("/{project_id}/service_accounts", response_model=ListPage[wire.ServiceAccount])
async def list_project_service_accounts(
    project_id: str, who: PrincipalDep, st: StateDep, after: After = None, limit: Limit = 20
) -> ListPage[Any]:
    async with st.db.connection() as conn:
        data, more = await service.list_service_accounts(
            conn, who, project_id, after=after, limit=limit
        )
    return page(data, more)


@router.post("/{project_id}/service_accounts", response_model=wire.CreatedServiceAccount)
async def create_project_service_account(
    project_id: str, body: wire.ServiceAccountCreate, who: PrincipalDep, st: StateDep
) -> wire.CreatedServiceAccount:
    async with st.db.connection() as conn:
        return await service.create_service_account(
            conn, who, project_id, body.name, body.role, st.now()
        )


@router.get("/{project_id}/service_accounts/{account_id}", response_model=wire.ServiceAccount)
async def retrieve_project_service_account(
    project_id: str, account_id: str, who: PrincipalDep, st: StateDep
) -> wire.ServiceAccount:
    async with st.db.connection() as conn:
        return await service.get_service_account(conn, who, project_id, account_id)


@router.delete(
    "/{project_id}/service_accounts/{account_id}", response_model=wire.ServiceAccountDeleted
)
async def delete_project_service_account(
    project_id: str, account_id: str, who: PrincipalDep, st: StateDep
) -> wire.ServiceAccountDeleted:
    async with st.db.connection() as conn:
        return await service.delete_service_account(conn, who, project_id, account_id, st.now())
