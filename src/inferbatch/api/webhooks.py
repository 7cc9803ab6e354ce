"""Webhook endpoint routes, as the official SDK's ``client.webhooks`` calls them
(``/v1/webhook_endpoints``, ``/v1/webhook_event_types``), and the deliveries listing (an
extension): thin wrappers over :mod:`inferbatch.services.webhooks`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from inferbatch.api.deps import AppState, current_user, state
from inferbatch.db import webhooks as webhook_rows
from inferbatch.domain import Principal, project_filter
from inferbatch.protocol.openai import ErrorResponse, ListPage
from inferbatch.protocol.webhooks import (
    EVENT_TYPES,
    DeletedWebhookEndpoint,
    WebhookDeliveryObject,
    WebhookEndpointCreate,
    WebhookEndpointObject,
    WebhookEndpointTest,
    WebhookEndpointTestResult,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    WebhookEventTypeList,
    WebhookRotateSecret,
)
from inferbatch.services import webhooks as webhook_service
from inferbatch.services.serialize import page

router = APIRouter(prefix="/v1", tags=["webhooks"])

UserDep = Annotated[Principal, Depends(current_user)]
StateDep = Annotated[AppState, Depends(state)]
After = Annotated[str | None, Query(description="The id of the last object of the page before.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size, 1 to 100.")]


@router.post("/webhook_endpoints", response_model=WebhookEndpointWithSecret)
async def create_webhook_endpoint(
    body: WebhookEndpointCreate, user: UserDep, st: StateDep
) -> WebhookEndpointWithSecret:
    """Register an endpoint for batch events; the answer holds its signing secret."""
    async with st.db.connection() as conn:
        return await webhook_service.create(conn, user, body, st.settings, st.now())


@router.get("/webhook_endpoints", response_model=ListPage[WebhookEndpointObject])
async def list_webhook_endpoints(
    user: UserDep, st: StateDep, after: After = None, limit: Limit = 20
) -> ListPage[Any]:
    """The caller's endpoints (every user's for admins), newest first."""
    async with st.db.connection() as conn:
        found = await webhook_rows.list_endpoints(
            conn, project_filter(user), after=after, limit=limit
        )
    data = [webhook_service.endpoint_object(e) for e in found[:limit]]
    return page(data, len(found) > limit)


@router.get("/webhook_endpoints/{webhook_endpoint_id}", response_model=WebhookEndpointObject)
async def retrieve_webhook_endpoint(
    webhook_endpoint_id: str, user: UserDep, st: StateDep
) -> WebhookEndpointObject:
    async with st.db.connection() as conn:
        endpoint = await webhook_service.get(conn, user, webhook_endpoint_id)
    return webhook_service.endpoint_object(endpoint)


@router.post("/webhook_endpoints/{webhook_endpoint_id}", response_model=WebhookEndpointObject)
async def update_webhook_endpoint(
    webhook_endpoint_id: str, body: WebhookEndpointUpdate, user: UserDep, st: StateDep
) -> WebhookEndpointObject:
    """Change the name, URL or event types (the complete new set)."""
    async with st.db.connection() as conn:
        endpoint = await webhook_service.update(
            conn, user, webhook_endpoint_id, body, st.settings, st.now()
        )
    return webhook_service.endpoint_object(endpoint)


@router.delete("/webhook_endpoints/{webhook_endpoint_id}", response_model=DeletedWebhookEndpoint)
async def delete_webhook_endpoint(
    webhook_endpoint_id: str, user: UserDep, st: StateDep
) -> DeletedWebhookEndpoint:
    """Delete the endpoint; its pending deliveries are never sent."""
    async with st.db.connection() as conn:
        await webhook_service.delete(conn, user, webhook_endpoint_id)
    return DeletedWebhookEndpoint(id=webhook_endpoint_id, deleted=True)


@router.post(
    "/webhook_endpoints/{webhook_endpoint_id}/rotate_secret",
    response_model=WebhookEndpointWithSecret,
)
async def rotate_webhook_endpoint_secret(
    webhook_endpoint_id: str,
    user: UserDep,
    st: StateDep,
    body: Annotated[WebhookRotateSecret | None, Body()] = None,
) -> WebhookEndpointWithSecret:
    """A new signing secret, answered once; the old one stops now, or signs deliveries
    too for 24 hours with ``keep_old_secret_active_for_24_hours``."""
    keep_old = body.keep_old_secret_active_for_24_hours if body is not None else False
    async with st.db.connection() as conn:
        return await webhook_service.rotate_secret(
            conn, user, webhook_endpoint_id, keep_old=keep_old, now=st.now()
        )


@router.post(
    "/webhook_endpoints/{webhook_endpoint_id}/test",
    response_model=WebhookEndpointTestResult,
    responses={502: {"model": ErrorResponse, "description": "The endpoint did not answer"}},
)
async def test_webhook_endpoint(
    webhook_endpoint_id: str, body: WebhookEndpointTest, user: UserDep, st: StateDep
) -> WebhookEndpointTestResult:
    """Send a signed sample event (``data.id`` names no batch) now and answer the
    receiver's HTTP status; a refused address is a 400, no answer within 10 s a 502."""
    return await webhook_service.send_test(
        st.db, user, webhook_endpoint_id, body.event_type, st.settings, st.now()
    )


@router.get("/webhook_event_types", response_model=WebhookEventTypeList)
async def list_webhook_event_types(user: UserDep) -> WebhookEventTypeList:
    """The event types this deployment sends: the four batch ones."""
    return WebhookEventTypeList(data=list(EVENT_TYPES))


@router.get(
    "/webhook_endpoints/{webhook_endpoint_id}/deliveries",
    response_model=ListPage[WebhookDeliveryObject],
)
async def list_webhook_endpoint_deliveries(
    webhook_endpoint_id: str, user: UserDep, st: StateDep, after: After = None, limit: Limit = 20
) -> ListPage[Any]:
    """Extension: the endpoint's deliveries, newest first: status, attempts, the last
    answer or error."""
    async with st.db.connection() as conn:
        found, has_more = await webhook_service.deliveries(
            conn, user, webhook_endpoint_id, after=after, limit=limit
        )
    data = [webhook_service.delivery_object(d) for d in found]
    return page(data, has_more)
