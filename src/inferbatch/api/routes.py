"""OpenAI-compatible routes: thin wrappers over the services."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from inferbatch.api.deps import AppState, current_user, state
from inferbatch.api.uploads import receive_upload
from inferbatch.db import batches as batch_rows
from inferbatch.db import files as file_rows
from inferbatch.domain import User
from inferbatch.errors import InvalidRequest, NotFound, TooLarge
from inferbatch.ids import new_id
from inferbatch.services import batches as batch_service
from inferbatch.services.batches import owner_filter
from inferbatch.services.serialize import batch_object, file_object, page

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
    limit = st.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise TooLarge(f"The file is larger than the limit of {limit} bytes.", param="file")
    upload = await receive_upload(
        request.headers.get("content-type", ""), request.stream(), st.blobs, limit
    )
    try:
        purpose = upload.fields.get("purpose")
        if purpose not in FILE_PURPOSES:
            raise InvalidRequest("purpose must be 'batch'.", param="purpose")
        if upload.blob_key is None:
            raise InvalidRequest("A file part named 'file' is required.", param="file")
        seconds = st.settings.file_retention_delta.total_seconds()
        if "expires_after[seconds]" in upload.fields:
            try:
                seconds = int(upload.fields["expires_after[seconds]"])
            except ValueError as exc:
                raise InvalidRequest(
                    "expires_after[seconds] must be an integer.", param="expires_after"
                ) from exc
        async with st.db.connection() as conn:
            record = await file_rows.insert(
                conn,
                file_id=new_id("file-"),
                owner_id=user.id,
                purpose=purpose,
                filename=upload.filename or "upload.jsonl",
                size=upload.size,
                sha256=upload.sha256,
                blob_key=upload.blob_key,
                expires_at=st.now() + timedelta(seconds=seconds),
            )
    except BaseException:
        if upload.blob_key is not None:
            await asyncio.to_thread(st.blobs.delete, upload.blob_key)
        raise
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


async def _file(st: AppState, user: User, file_id: str) -> Any:
    async with st.db.connection() as conn:
        record = await file_rows.get(conn, file_id, owner_filter(user))
    if record is None:
        raise NotFound(f"No file with id {file_id!r}.")
    return record


@router.get("/files/{file_id}")
async def retrieve_file(file_id: str, user: UserDep, st: StateDep) -> dict[str, Any]:
    return file_object(await _file(st, user, file_id))


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, user: UserDep, st: StateDep) -> dict[str, Any]:
    async with st.db.connection() as conn:
        record = await file_rows.delete(conn, file_id, owner_filter(user))
    if record is None:
        raise NotFound(f"No file with id {file_id!r}.")
    await asyncio.to_thread(st.blobs.delete, record.blob_key)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, user: UserDep, st: StateDep) -> Response:
    record = await _file(st, user, file_id)
    if not st.blobs.exists(record.blob_key):
        raise NotFound(f"The content of file {file_id!r} is gone.")
    return StreamingResponse(
        st.blobs.iter_chunks(record.blob_key),
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
    async with st.db.connection() as conn:
        rows = await batch_rows.list_page(
            conn, owner_filter(user), after=q.get("after"), limit=limit
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


# -- models ---------------------------------------------------------------------------------


@router.get("/models")
async def list_models(user: UserDep, st: StateDep) -> dict[str, Any]:
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "inferbatch"}
        for name in await st.engines.served_models()
    ]
    return {"object": "list", "data": data}
