"""The Webhooks page: the user's endpoints (all of them for admins) and their recent
deliveries with status, attempts and the last answer or error, including deliveries to
batches' own callback URLs."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from inferbatch.db import webhooks as webhook_rows
from inferbatch.domain import WebhookDelivery
from inferbatch.portal.web import PageDep, PortalRoute

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

MAX_ENDPOINTS = 100
RECENT_DELIVERIES = 100
DELIVERY_CLASS = {"pending": "warning", "delivered": "success", "failed": "danger"}


@router.get("/webhooks")
async def webhooks_page(page: PageDep) -> HTMLResponse:
    async with page.st.db.connection() as conn:
        endpoints = await webhook_rows.list_endpoints(
            conn, page.project, after=None, limit=MAX_ENDPOINTS
        )
        recent = await webhook_rows.recent_deliveries(conn, page.project, limit=RECENT_DELIVERIES)
    by_endpoint: dict[str | None, list[WebhookDelivery]] = {}
    for d in recent:
        by_endpoint.setdefault(d.endpoint_id, []).append(d)
    return page.render(
        "webhooks.html",
        endpoints=endpoints[:MAX_ENDPOINTS],
        more_endpoints=len(endpoints) > MAX_ENDPOINTS,
        by_endpoint=by_endpoint,
        callbacks=by_endpoint.get(None, []),
        delivery_class=lambda status: DELIVERY_CLASS.get(status, "secondary"),
    )
