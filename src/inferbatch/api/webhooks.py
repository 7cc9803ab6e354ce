"""Webhook endpoint routes (``/v1/webhooks``, an extension): thin wrappers over
:mod:`inferbatch.services.webhooks`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from inferbatch.api.deps import AppState, current_user, state
from inferbatch.db import webhooks as webhook_rows
from inferbatch.domain import User
from inferbatch.protocol.webhooks import (
    CreatedWebhook,
    Webhook,
    WebhookCreate,
    WebhookDeleted,
    WebhookDeliveryList,
    WebhookList,
    WebhookUpdate,
)
from inferbatch.services import webhooks as webhook_service

router = APIRouter(prefix="/v1", tags=["webhooks"])

UserDep = Annotated[User, Depends(current_user)]
StateDep = Annotated[AppState, Depends(state)]
After = Annotated[str | None, Query(description="The id of the last object of the page before.")]


@router.post("/webhooks", response_model=CreatedWebhook)
async def create_webhook(body: WebhookCreate, user: UserDep, st: StateDep) -> CreatedWebhook:
    """Register an endpoint for batch events; the answer holds its signing secret, once."""
    async with st.db.connection() as conn:
        return await webhook_service.create(conn, user, body, st.settings, st.now())


@router.get("/webhooks", response_model=WebhookList)
async def list_webhooks(
    user: UserDep,
    st: StateDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> WebhookList:
    async with st.db.connection() as conn:
        found = await webhook_rows.list_endpoints(
            conn, webhook_service.owner_filter(user), after=after, limit=limit
        )
    data = [webhook_service.webhook_object(e) for e in found[:limit]]
    return WebhookList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(found) > limit,
    )


@router.get("/webhooks/{webhook_id}", response_model=Webhook)
async def retrieve_webhook(webhook_id: str, user: UserDep, st: StateDep) -> Webhook:
    async with st.db.connection() as conn:
        return webhook_service.webhook_object(await webhook_service.get(conn, user, webhook_id))


@router.post("/webhooks/{webhook_id}", response_model=Webhook)
async def update_webhook(
    webhook_id: str, body: WebhookUpdate, user: UserDep, st: StateDep
) -> Webhook:
    """Change the URL, events, description or enabled flag; disabling an endpoint fails
    its pending deliveries."""
    async with st.db.connection() as conn:
        endpoint = await webhook_service.update(conn, user, webhook_id, body, st.settings, st.now())
    return webhook_service.webhook_object(endpoint)


@router.delete("/webhooks/{webhook_id}", response_model=WebhookDeleted)
async def delete_webhook(webhook_id: str, user: UserDep, st: StateDep) -> WebhookDeleted:
    """Delete the endpoint; its pending deliveries are never sent."""
    async with st.db.connection() as conn:
        await webhook_service.delete(conn, user, webhook_id)
    return WebhookDeleted(id=webhook_id, deleted=True)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=WebhookDeliveryList)
async def list_webhook_deliveries(
    webhook_id: str,
    user: UserDep,
    st: StateDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> WebhookDeliveryList:
    """The endpoint's deliveries, newest first: status, attempts, the last answer or error."""
    async with st.db.connection() as conn:
        found, has_more = await webhook_service.deliveries(
            conn, user, webhook_id, after=after, limit=limit
        )
    data = [webhook_service.delivery_object(d) for d in found]
    return WebhookDeliveryList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )
