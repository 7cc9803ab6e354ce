"""One request: its input, output, error, attempts, pool and deduplication source; retry."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from inferbatch.errors import Conflict
from inferbatch.portal.session import Flash
from inferbatch.portal.web import ActionDep, PageDep, PortalRoute
from inferbatch.services import batches as batch_service
from inferbatch.services import requests as request_service

router = APIRouter(route_class=PortalRoute, include_in_schema=False)


@router.get("/requests/{request_id}")
async def request_page(request_id: str, page: PageDep) -> HTMLResponse:
    async with page.st.db.connection() as conn:
        row = await request_service.get_request(conn, page.user, request_id)
        batch = await batch_service.get(conn, page.user, row["batch_id"])
    item = request_service.request_object(row, detail=True).model_dump()
    took = None
    if row["started_at"] is not None and row["finished_at"] is not None:
        took = (row["finished_at"] - row["started_at"]).total_seconds()
    return page.render(
        "request.html",
        item=item,
        row=row,
        batch=batch,
        took=took,
        failure=failure(item),
        retryable=row["status"] == "failed",
    )


def failure(item: dict[str, Any]) -> dict[str, Any] | None:
    """What went wrong, for a failed request: its error, or the engine's error answer."""
    if item["error"]:
        error: dict[str, Any] = item["error"]
        return {"message": str(error.get("message", "")), "detail": error}
    response = item.get("response")
    if item["status"] == "failed" and response and (response["status_code"] or 0) >= 400:
        body = response["body"]
        inner = body.get("error") if isinstance(body, dict) else None
        message = inner.get("message") if isinstance(inner, dict) else None
        return {
            "message": f"The engine answered {response['status_code']}"
            + (f": {message}" if message else "."),
            "detail": body,
        }
    return None


@router.post("/requests/{request_id}/retry")
async def retry(request_id: str, page: ActionDep) -> Response:
    back = f"/requests/{request_id}"
    try:
        async with page.st.db.connection() as conn:
            await request_service.retry_request(conn, page.user, request_id, page.st.now())
    except Conflict as exc:
        return page.redirect(back, Flash("danger", exc.message))
    return page.redirect(back, Flash("success", "The request was sent back to the queue."))
