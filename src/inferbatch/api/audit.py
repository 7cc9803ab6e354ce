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


def _time_bound(alias: str) -> Any:
    """An ``effective_at`` bound: Unix seconds, up to the end of year 9999."""
    return Query(alias=alias, ge=0, le=service.MAX_UNIX_SECONDS)


router = APIRouter(prefix="/v1/organization", tags=["administration"])

PrincipalDep = Annotated[Principal, Depends(authenticated)]
StateDep = Annotated[AppState, Depends(state)]


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
    gt: Annotated[int | None, _time_bound("effective_at[gt]")] = None,
    gte: Annotated[int | None, _time_bound("effective_at[gte]")] = None,
    lt: Annotated[int | None, _time_bound("effective_at[lt]")] = None,
    lte: Annotated[int | None, _time_bound("effective_at[lte]")] = None,
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
