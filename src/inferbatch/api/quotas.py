"""A project's quotas: thin routes over :mod:`inferbatch.services.quotas`, typed by
:mod:`inferbatch.protocol.quotas`. Every key of the project reads them; admins read any
project's and set them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from inferbatch.api.deps import AppState, authenticated, state
from inferbatch.db.quotas import ProjectQuotas
from inferbatch.domain import Principal
from inferbatch.protocol import quotas as wire
from inferbatch.services import quotas as service

router = APIRouter(prefix="/v1/organization/projects", tags=["administration"])

PrincipalDep = Annotated[Principal, Depends(authenticated)]
StateDep = Annotated[AppState, Depends(state)]


def quotas_object(q: ProjectQuotas) -> wire.ProjectQuotas:
    return wire.ProjectQuotas(
        project_id=q.project_id,
        limits=wire.QuotaLimits.model_validate(dict(q.limits)),
        usage=wire.QuotaUsage.model_validate(dict(q.usage)),
        updated_at=int(q.updated_at.timestamp()) if q.updated_at else None,
    )


@router.get("/{project_id}/quotas", response_model=wire.ProjectQuotas)
async def retrieve_quotas(project_id: str, who: PrincipalDep, st: StateDep) -> wire.ProjectQuotas:
    async with st.db.connection() as conn:
        return quotas_object(await service.get(conn, who, project_id, st.now()))


@router.post("/{project_id}/quotas", response_model=wire.ProjectQuotas)
async def modify_quotas(
    project_id: str, body: wire.QuotaLimits, who: PrincipalDep, st: StateDep
) -> wire.ProjectQuotas:
    changes = body.model_dump(exclude_unset=True)
    async with st.db.connection() as conn:
        return quotas_object(await service.set_limits(conn, who, project_id, changes, st.now()))
