"""``GET /v1/organization/audit_logs``: OpenAI's audit log list, thin over
:mod:`inferbatch.services.audit`. Admin keys read every entry, a project owner's key its
project's entries; other keys are refused (403)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from inferbatch.api.deps import AppState, authenticated, state
from inferbatch.domain import Principal
from inferbatch.protocol import audit as wire
from inferbatch.protocol.openai import ListPage
from inferbatch.services import audit as service
from inferbatch.services.serialize import page

router = APIRouter(prefix="/v1/organization", tags=["administration"])

PrincipalDep = Annotated[Principal, Depends(authenticated)]
StateDep = Annotated[AppState, Depends(state)]


LAST_SECOND = 253402300799
"""The last Unix time a timestamp can hold (9999-12-31 23:59:59 UTC): a filter past it is a
400, not an overflow."""


@router.get("/audit_logs", response_model=ListPage[wire.AuditLog])
async def list_audit_logs(
    who: PrincipalDep,
    st: StateDep,
    project_ids: Annotated[
        list[str] | None, Query(alias="project_ids[]", description="Only these projects.")
    ] = None,
    event_types: Annotated[
        list[str] | None, Query(alias="event_types[]", description="Only these types.")
    ] = None,
    actor_ids: Annotated[
        list[str] | None,
        Query(alias="actor_ids[]", description="Users', service accounts' or keys' ids."),
    ] = None,
    actor_emails: Annotated[
        list[str] | None,
        Query(alias="actor_emails[]", description="Users' names (users have no addresses)."),
    ] = None,
    resource_ids: Annotated[
        list[str] | None, Query(alias="resource_ids[]", description="The objects acted on.")
    ] = None,
    gt: Annotated[int | None, Query(alias="effective_at[gt]", ge=0, le=LAST_SECOND)] = None,
    gte: Annotated[int | None, Query(alias="effective_at[gte]", ge=0, le=LAST_SECOND)] = None,
    lt: Annotated[int | None, Query(alias="effective_at[lt]", ge=0, le=LAST_SECOND)] = None,
    lte: Annotated[int | None, Query(alias="effective_at[lte]", ge=0, le=LAST_SECOND)] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 20,
    after: Annotated[str | None, Query(description="The id of the last entry before.")] = None,
    before: Annotated[str | None, Query(description="The id of the first entry after.")] = None,
) -> ListPage[Any]:
    filters = service.filters_of(
        project_ids=project_ids,
        event_types=event_types,
        actor_ids=actor_ids,
        actor_emails=actor_emails,
        resource_ids=resource_ids,
        gt=gt,
        gte=gte,
        lt=lt,
        lte=lte,
    )
    async with st.db.connection() as conn:
        found, more = await service.list_logs(
            conn, who, filters, limit=limit, after=after, before=before
        )
    return page([service.log_object(r) for r in found], more)
