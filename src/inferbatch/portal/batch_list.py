"""The batch list (filters, sorts, keyset pages) and the batch actions: cancel, clone,
retry failed requests. Actions call the same services as the REST API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from inferbatch.db import browse
from inferbatch.db.types import Conn
from inferbatch.domain import ENDPOINTS, TERMINAL_BATCH_STATUSES
from inferbatch.errors import Conflict
from inferbatch.portal.auth import safe_next
from inferbatch.portal.session import Flash
from inferbatch.portal.web import ActionDep, Page, PageDep, PortalRoute
from inferbatch.services import batches as batch_service
from inferbatch.services import requests as request_service

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

BATCH_STATUSES = (
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
)
PAGE_SIZES = (25, 50, 100)
SORT_NAMES = {
    "newest": "Newest first",
    "oldest": "Oldest first",
    "deadline": "Deadline soonest",
    "priority": "Priority, then newest",
}
CANCELLABLE = ("validating", "in_progress")


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def parse_filters(q: dict[str, str]) -> tuple[browse.BatchFilter, dict[str, str]]:
    """The filter from query parameters, and the parameters that were understood (to
    build links with). Unknown values are ignored rather than refused."""
    kept: dict[str, str] = {}
    status = q.get("status") if q.get("status") in BATCH_STATUSES else None
    priority = q.get("priority") if q.get("priority") in ("normal", "medium", "high") else None
    endpoint = q.get("endpoint") if q.get("endpoint") in ENDPOINTS else None
    start, end = _day(q.get("from")), _day(q.get("to"))
    for name, value in (("status", status), ("priority", priority), ("endpoint", endpoint)):
        if value:
            kept[name] = value
    if start:
        kept["from"] = start.isoformat()
    if end:
        kept["to"] = end.isoformat()
    f = browse.BatchFilter(
        status=status,
        priority=cast(browse.PriorityClass | None, priority),
        endpoint=endpoint,
        created_from=datetime.combine(start, time(), UTC) if start else None,
        # "to" is inclusive: everything before the next midnight
        created_before=datetime.combine(end + timedelta(days=1), time(), UTC) if end else None,
    )
    return f, kept


@router.get("/batches")
async def batch_list(request: Request, page: PageDep) -> HTMLResponse:
    q = dict(request.query_params)
    f, kept = parse_filters(q)
    sort = q.get("sort") if q.get("sort") in browse.SORTS else "newest"
    size = int(q["size"]) if q.get("size", "").isdigit() and int(q["size"]) in PAGE_SIZES else 50
    if sort != "newest":
        kept["sort"] = str(sort)
    if size != 50:
        kept["size"] = str(size)
    after, before = q.get("after") or None, q.get("before") or None
    if after and before:
        before = None
    async with page.st.db.connection() as conn:
        rows, more = await browse.list_batches(
            conn,
            page.project,
            f,
            sort=cast(browse.Sort, sort),
            after=after,
            before=before,
            limit=size,
        )
        total = await browse.count_batches(conn, page.project, f)
    # Keyset pages: "older" continues after the last row; "newer" goes back before the
    # first. A page reached from a cursor always has something on the side it came from.
    has_next = more if before is None else True
    has_prev = (after is not None) if before is None else more
    return page.render(
        "batches.html",
        rows=rows,
        total=total,
        cap=10_000,
        params=kept,
        sort=sort,
        size=size,
        statuses=BATCH_STATUSES,
        endpoints=ENDPOINTS,
        sorts=SORT_NAMES,
        sizes=PAGE_SIZES,
        next_cursor=rows[-1]["id"] if rows and has_next else None,
        prev_cursor=rows[0]["id"] if rows and has_prev else None,
        paged=bool(after or before),
        cancellable=CANCELLABLE,
        terminal=TERMINAL_BATCH_STATUSES,
    )


async def _act(
    request: Request,
    page: Page,
    batch_id: str,
    action: Callable[[Conn], Awaitable[Any]],
    done: Callable[[Any], tuple[str, str]],
) -> Response:
    """Run a service call; redirect with a success message, or with the reason it could
    not be done (a 409 from the service). Unknown batches fall through to the 404 page."""
    form = await request.form()
    back = safe_next(form.get("next") or f"/batches/{batch_id}")
    try:
        async with page.st.db.connection() as conn:
            result = await action(conn)
    except Conflict as exc:
        return page.redirect(back, Flash("danger", exc.message))
    url, message = done(result)
    return page.redirect(url if url else back, Flash("success", message))


@router.post("/batches/{batch_id}/cancel")
async def cancel(batch_id: str, request: Request, page: ActionDep) -> Response:
    return await _act(
        request,
        page,
        batch_id,
        lambda conn: batch_service.cancel(conn, page.user, batch_id, page.st.now()),
        lambda b: ("", f"Batch {b.id} is {b.status.replace('_', ' ')}."),
    )


@router.post("/batches/{batch_id}/clone")
async def clone(batch_id: str, request: Request, page: ActionDep) -> Response:
    return await _act(
        request,
        page,
        batch_id,
        lambda conn: request_service.clone_batch(conn, page.user, batch_id, page.st.now()),
        lambda b: (f"/batches/{b.id}", f"Cloned {batch_id} into this new batch."),
    )


@router.post("/batches/{batch_id}/retry")
async def retry_failed(batch_id: str, request: Request, page: ActionDep) -> Response:
    return await _act(
        request,
        page,
        batch_id,
        lambda conn: request_service.retry_batch(conn, page.user, batch_id, page.st.now()),
        lambda b: ("", "Failed requests were sent back to the queue."),
    )
