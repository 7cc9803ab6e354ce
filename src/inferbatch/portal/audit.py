"""The Audit log page: the newest entries first, filtered by type and actor, in keyset
pages. Admins see every entry, a project's owners that project's; others are refused."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from inferbatch.portal.web import PageDep, PortalRoute
from inferbatch.services import audit

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

PAGE_SIZE = 50


@router.get("/audit")
async def audit_page(
    page: PageDep,
    type: Annotated[str | None, Query(max_length=100)] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    after: Annotated[str | None, Query(max_length=100)] = None,
    before: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE)] = PAGE_SIZE,
) -> HTMLResponse:
    type_ = (type or "").strip()
    actor_ = (actor or "").strip()
    filters = audit.filters_of(
        event_types=[type_] if type_ else None,
        actor_ids=[actor_] if actor_.startswith(("user_", "svc_acct_", "key_")) else None,
        actor_emails=[actor_]
        if actor_ and not actor_.startswith(("user_", "svc_acct_", "key_"))
        else None,
    )
    async with page.st.db.connection() as conn:
        found, more = await audit.list_logs(
            conn, page.user, filters, limit=limit, after=after or None, before=before or None
        )
    ids = [audit.public_id(r) for r in found]
    backwards = bool(before) and not after
    return page.render(
        "audit.html",
        entries=list(zip(ids, found, strict=True)),
        type_filter=type_,
        actor_filter=actor_,
        limit=limit,
        next_after=ids[-1] if ids and (more or backwards) else None,
        prev_before=ids[0] if ids and (after or (backwards and more)) else None,
        known_types=sorted(set(audit.EVENT_TYPES.values()) | {"login.failed", "logout.failed"}),
    )
