"""OpenAI-compatible routes: thin wrappers over the services."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from inferbatch.api.deps import AppState, current_user, state
from inferbatch.db import batches as batch_rows
from inferbatch.db import files as file_rows
from inferbatch.db import workers as worker_rows
from inferbatch.domain import User
from inferbatch.errors import Forbidden, InvalidRequest
from inferbatch.services import batches as batch_service
from inferbatch.services import files as file_service
from inferbatch.services import requests as request_service
from inferbatch.services.batches import owner_filter
from inferbatch.services.serialize import batch_object, file_object, page, ts

router = APIRouter(prefix="/v1")

UserDep = Annotated[User, Depends(current_user)]
StateDep = Annotated[AppState, Depends(state)]
FILE_PURPOSES = ("batch",)


def _limit(value: str | None, default: int = 20, high: int = 100) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= high:
        raise InvalidRequest(f"limit must be an integer from 1 to {high}.", param="limit")
    return limit


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body


# -- files ----------------------------------------------------------------------------------


@router.post("/files")
async def upload_file(request: Request, user: UserDep, st: StateDep) -> dict[str, Any]:
    record = await file_service.upload(
        st.db,
        st.blobs,
        st.settings,
        user,
        content_type=request.headers.get("content-type", ""),
        content_length=request.headers.get("content-length"),
        body=request.stream(),
        now=st.now(),
        validate=request.query_params.get("validate", "false").lower() in ("true", "1"),
    )
    return file_object(record)


@router.get("/files")
async def list_files(request: Request, user: UserDep, st: StateDep) -> dict[str, Any]:
    q = request.query_params
    limit = _limit(q.get("limit"), default=10000, high=10000)
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
    async with st.db.connection() as conn:
        rows = await file_rows.list_page(
            conn,
            owner_filter(user),
            purpose=q.get("purpose"),
            after=q.get("after"),
            limit=limit,
            ascending=order == "asc",
        )
    return page([file_object(f) for f in rows[:limit]], len(rows) > limit)


@router.get("/files/{file_id}")
async def retrieve_file(file_id: str, user: UserDep, st: StateDep) -> dict[str, Any]:
    return file_object(await file_service.get(st.db, user, file_id))


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, user: UserDep, st: StateDep) -> dict[str, Any]:
    await file_service.delete(st.db, st.blobs, user, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, user: UserDep, st: StateDep) -> Response:
    record, chunks = await file_service.open_content(st.db, st.blobs, user, file_id)
    return StreamingResponse(
        chunks,
        media_type="application/jsonl",
        headers={
            "content-length": str(record.bytes),
            "content-disposition": f'attachment; filename="{record.filename}"',
        },
    )


# -- batches --------------------------------------------------------------------------------


@router.post("/batches")
async def create_batch(request: Request, user: UserDep, st: StateDep) -> dict[str, Any]:
    body = await _json_body(request)
    async with st.db.connection() as conn:
        batch = await batch_service.create(conn, user, body, st.settings, st.now())
    return batch_object(batch)


@router.get("/batches")
async def list_batches(request: Request, user: UserDep, st: StateDep) -> dict[str, Any]:
    q = request.query_params
    limit = _limit(q.get("limit"))
    priority = batch_service.priority_filter(q.get("priority"))
    async with st.db.connection() as conn:
        rows = await batch_rows.list_page(
            conn, owner_filter(user), after=q.get("after"), limit=limit, priority=priority
        )
    return page([batch_object(b) for b in rows[:limit]], len(rows) > limit)


@router.get("/batches/{batch_id}")
async def retrieve_batch(batch_id: str, user: UserDep, st: StateDep) -> dict[str, Any]:
    async with st.db.connection() as conn:
        return batch_object(await batch_service.get(conn, user, batch_id))


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, user: UserDep, st: StateDep) -> dict[str, Any]:
    async with st.db.connection() as conn:
        return batch_object(await batch_service.cancel(conn, user, batch_id, st.now()))


@router.get("/batches/{batch_id}/requests")
async def list_batch_requests(
    batch_id: str, request: Request, user: UserDep, st: StateDep
) -> dict[str, Any]:
    q = request.query_params
    limit = _limit(q.get("limit"), default=100, high=1000)
    async with st.db.connection() as conn:
        data, has_more = await request_service.list_requests(
            conn,
            user,
            batch_id,
            status=q.get("status"),
            custom_id=q.get("custom_id"),
            after=q.get("after"),
            limit=limit,
        )
    return page(data, has_more)


@router.get("/requests/{request_id}")
async def retrieve_request(request_id: str, user: UserDep, st: StateDep) -> dict[str, Any]:
    async with st.db.connection() as conn:
        row = await request_service.get_request(conn, user, request_id)
    return request_service.request_object(row, detail=True)


@router.post("/requests/{request_id}/retry")
async def retry_request(request_id: str, user: UserDep, st: StateDep) -> dict[str, Any]:
    async with st.db.connection() as conn:
        return await request_service.retry_request(conn, user, request_id, st.now())


@router.post("/batches/{batch_id}/retry")
async def retry_batch(batch_id: str, user: UserDep, st: StateDep) -> dict[str, Any]:
    async with st.db.connection() as conn:
        return batch_object(await request_service.retry_batch(conn, user, batch_id, st.now()))


@router.post("/batches/{batch_id}/clone")
async def clone_batch(batch_id: str, user: UserDep, st: StateDep) -> dict[str, Any]:
    async with st.db.connection() as conn:
        return batch_object(await request_service.clone_batch(conn, user, batch_id, st.now()))


@router.get("/workers")
async def list_workers(user: UserDep, st: StateDep) -> dict[str, Any]:
    """Worker processes by pool with their state and in-flight count (admins only)."""
    if not user.is_admin:
        raise Forbidden()
    async with st.db.connection() as conn:
        rows = await worker_rows.list_recent(conn)
    data = [
        {
            "id": r["id"],
            "object": "worker",
            "pool": r["pool"],
            "host": r["host"],
            "pid": r["pid"],
            "state": r["state"],
            "in_flight": r["in_flight"],
            "started_at": ts(r["started_at"]),
            "heartbeat_at": ts(r["heartbeat_at"]),
        }
        for r in rows
    ]
    return page(data, False)


# -- models ---------------------------------------------------------------------------------


@router.get("/models")
async def list_models(user: UserDep, st: StateDep) -> dict[str, Any]:
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "inferbatch"}
        for name in await st.engines.served_models()
    ]
    return {"object": "list", "data": data}
