"""The costs routes: OpenAI's ``GET /v1/organization/costs`` (day buckets, as the
official SDK's ``client.admin.organization.usage.costs`` calls it) and its CSV export
``GET /v1/organization/costs.csv`` (an extension): thin wrappers over
:mod:`inferbatch.services.costs`. A user's key sees that user's costs, an admin's
everyone's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse

from inferbatch.api.deps import AppState, current_user, state
from inferbatch.domain import Principal
from inferbatch.errors import InvalidRequest
from inferbatch.protocol.costs import CostsPage
from inferbatch.services import costs as cost_service

router = APIRouter(prefix="/v1", tags=["costs"])

UserDep = Annotated[Principal, Depends(current_user)]
StateDep = Annotated[AppState, Depends(state)]
StartTime = Annotated[
    int,
    Query(
        ge=0,
        description="Unix seconds, inclusive: the UTC day that holds it is the first bucket.",
    ),
]
EndTime = Annotated[
    int | None,
    Query(
        ge=0, description="Unix seconds, exclusive (rounded up to a UTC midnight). Default: now."
    ),
]
GroupByParam = Annotated[
    list[str] | None,
    Query(description="user_id and/or line_item (repeated or comma-separated)."),
]
# the official SDK writes arrays as group_by[]=...
GroupByBrackets = Annotated[list[str] | None, Query(alias="group_by[]", include_in_schema=False)]


@router.get("/organization/costs", response_model=CostsPage)
async def organization_costs(
    user: UserDep,
    st: StateDep,
    start_time: StartTime,
    end_time: EndTime = None,
    bucket_width: Annotated[str, Query(description="Only 1d.")] = "1d",
    group_by: GroupByParam = None,
    group_by_brackets: GroupByBrackets = None,
    limit: Annotated[
        int, Query(ge=1, le=cost_service.MAX_BUCKETS, description="Buckets per page, 1 to 180.")
    ] = 7,
    page: Annotated[str | None, Query(description="next_page of the previous page.")] = None,
) -> CostsPage:
    """GPU cost per UTC day, fixed when the work was counted, with the savings of spot
    capacity and deduplication; grouped by user (admins see every user) and by line item
    (model and pool) when asked."""
    if bucket_width != "1d":
        raise InvalidRequest("bucket_width: only 1d is supported.", param="bucket_width")
    period = cost_service.Period.of_times(start_time, end_time, st.now())
    grouping = cost_service.parse_group_by([*(group_by or ()), *(group_by_brackets or ())])
    return await cost_service.costs_page(
        st.db, user, period, group_by=grouping, limit=limit, page=page
    )


@router.get(
    "/organization/costs.csv",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/csv": {}},
            "description": "One row per UTC day, user, model, pool and currency: "
            + ", ".join(cost_service.CSV_COLUMNS)
            + ".",
        }
    },
)
async def organization_costs_csv(
    user: UserDep, st: StateDep, start_time: StartTime, end_time: EndTime = None
) -> Response:
    """Extension: the period's costs as CSV, with GPU-seconds, savings, tokens and
    requests, for a spreadsheet or a billing system."""
    period = cost_service.Period.of_times(start_time, end_time, st.now())
    return StreamingResponse(
        cost_service.csv_lines(st.db, user, period),
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="{cost_service.csv_filename(period)}"'
        },
    )
