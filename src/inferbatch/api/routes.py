"""OpenAI-compatible routes: thin wrappers over the services, typed by the wire models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from inferbatch.api.deps import AppState, IdempotencyHeader, current_user, state
from inferbatch.db import batches as batch_rows
from inferbatch.db import files as file_rows
from inferbatch.db import workers as worker_rows
from inferbatch.domain import Principal, project_filter
from inferbatch.errors import Forbidden
from inferbatch.protocol.openai import (
    Batch,
    BatchCreateRequest,
    BatchRequest,
    CreatedBatch,
    FileDeleted,
    FileObject,
    ListPage,
    Model,
    ModelList,
    Worker,
)
from inferbatch.services import batches as batch_service
from inferbatch.services import files as file_service
from inferbatch.services import idempotency
from inferbatch.services import output as output_service
from inferbatch.services import requests as request_service
from inferbatch.services import webhooks as webhook_service
from inferbatch.services.serialize import batch_fields, batch_object, file_object, page, ts

router = APIRouter(prefix="/v1")

UserDep = Annotated[Principal, Depends(current_user)]
StateDep = Annotated[AppState, Depends(state)]
After = Annotated[str | None, Query(description="The id of the last object of the page before.")]

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {
                            "type": "string",
                            "enum": list(file_service.FILE_PURPOSES),
                        },
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer"},
                    },
                }
            }
        },
    }
}


# -- files ----------------------------------------------------------------------------------


@router.post("/files", response_model=FileObject, openapi_extra=UPLOAD_BODY)
async def upload_file(
    request: Request,
    user: UserDep,
    st: StateDep,
    validate: Annotated[
        bool, Query(description="Extension: check every line of a batch file first.")
    ] = False,
    idempotency_key: IdempotencyHeader = None,
) -> FileObject:
    record = await file_service.upload(
        st.db,
        st.blobs,
        st.settings,
        user,
        content_type=request.headers.get("content-type", ""),
        content_length=request.headers.get("content-length"),
        body=request.stream(),
        now=st.now(),
        validate=validate,
        idempotency_key=idempotency_key,
    )
    return file_object(record)


@router.get("/files", response_model=ListPage[FileObject])
async def list_files(
    user: UserDep,
    st: StateDep,
    purpose: str | None = None,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Literal["asc", "desc"] = "desc",
) -> ListPage[Any]:
    async with st.db.connection() as conn:
        rows = await file_rows.list_page(
            conn,
            project_filter(user),
            purpose=purpose,
            after=after,
            limit=limit,
            ascending=order == "asc",
        )
    return page([file_object(f) for f in rows[:limit]], len(rows) > limit)


@router.get("/files/{file_id}", response_model=FileObject)
async def retrieve_file(file_id: str, user: UserDep, st: StateDep) -> FileObject:
    return file_object(await file_service.get(st.db, user, file_id))


@router.delete("/files/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, user: UserDep, st: StateDep) -> FileDeleted:
    await file_service.delete(st.db, st.blobs, user, file_id)
    return FileDeleted(id=file_id, deleted=True)


@router.get(
    "/files/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/jsonl": {}}, "description": "The file."}},
)
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


@router.post("/batches", response_model=CreatedBatch)
async def create_batch(
    body: BatchCreateRequest,
    user: UserDep,
    st: StateDep,
    idempotency_key: IdempotencyHeader = None,
) -> CreatedBatch:
    new = batch_service.new_batch(
        st.settings,
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
        output_expires_seconds=(
            body.output_expires_after.seconds if body.output_expires_after else None
        ),
        callback_url=(
            await webhook_service.check_url(body.callback_url, st.settings, "callback_url")
            if body.callback_url is not None
            else None
        ),
        allowed_locations=body.allowed_locations,
    )
    key = idempotency.parse(idempotency_key, "POST /v1/batches", body.model_dump_json())
    async with st.db.connection() as conn:
        batch = await batch_service.create(conn, user, new, st.now(), key)
    return CreatedBatch.model_validate(
        batch_fields(batch) | {"callback_secret": batch.callback_secret}
    )


@router.get("/batches", response_model=ListPage[Batch])
async def list_batches(
    user: UserDep,
    st: StateDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    priority: Annotated[
        int | None,
        Query(ge=1, le=batch_service.MAX_PRIORITY, description="Extension: only this priority."),
    ] = None,
) -> ListPage[Any]:
    async with st.db.connection() as conn:
        rows = await batch_rows.list_page(
            conn, project_filter(user), after=after, limit=limit, priority=priority
        )
    return page([batch_object(b) for b in rows[:limit]], len(rows) > limit)


@router.get("/batches/{batch_id}", response_model=Batch)
async def retrieve_batch(batch_id: str, user: UserDep, st: StateDep) -> Batch:
    async with st.db.connection() as conn:
        return batch_object(await batch_service.get(conn, user, batch_id))


@router.post("/batches/{batch_id}/cancel", response_model=Batch)
async def cancel_batch(batch_id: str, user: UserDep, st: StateDep) -> Batch:
    async with st.db.connection() as conn:
        return batch_object(await batch_service.cancel(conn, user, batch_id, st.now()))


# -- extensions -----------------------------------------------------------------------------


@router.get(
    "/batches/{batch_id}/output",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/jsonl": {}},
            "description": "Output lines of the requests settled after the cursor, in the "
            "order they settled. Headers: x-inferbatch-next-after (the cursor for the next "
            "call), x-inferbatch-complete (true once the batch ended and all its lines were "
            "returned), x-inferbatch-batch-status.",
        }
    },
)
async def batch_output(
    batch_id: str,
    user: UserDep,
    st: StateDep,
    after: Annotated[
        str | None, Query(description="x-inferbatch-next-after of the previous call.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> Response:
    """Extension: the output of a batch while it runs, a page of settled lines at a time."""
    async with st.db.connection() as conn:
        got = await output_service.output_page(conn, user, batch_id, after, limit)
    headers = {
        "x-inferbatch-complete": "true" if got.complete else "false",
        "x-inferbatch-batch-status": got.status,
    }
    if got.next_after is not None:
        headers["x-inferbatch-next-after"] = got.next_after
    return Response(b"".join(got.lines), media_type="application/jsonl", headers=headers)


@router.get("/batches/{batch_id}/requests", response_model=ListPage[BatchRequest])
async def list_batch_requests(
    batch_id: str,
    user: UserDep,
    st: StateDep,
    status: Annotated[str | None, Query(description="Only requests in this status.")] = None,
    custom_id: str | None = None,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ListPage[Any]:
    async with st.db.connection() as conn:
        data, has_more = await request_service.list_requests(
            conn,
            user,
            batch_id,
            status=status,
            custom_id=custom_id,
            after=after,
            limit=limit,
        )
    return page(data, has_more)


@router.get("/requests/{request_id}", response_model=BatchRequest)
async def retrieve_request(request_id: str, user: UserDep, st: StateDep) -> BatchRequest:
    async with st.db.connection() as conn:
        row = await request_service.get_request(conn, user, request_id)
    return request_service.request_object(row, detail=True)


@router.post("/requests/{request_id}/retry", response_model=BatchRequest)
async def retry_request(request_id: str, user: UserDep, st: StateDep) -> BatchRequest:
    async with st.db.connection() as conn:
        return await request_service.retry_request(conn, user, request_id, st.now())


@router.post("/batches/{batch_id}/retry", response_model=Batch)
async def retry_batch(batch_id: str, user: UserDep, st: StateDep) -> Batch:
    async with st.db.connection() as conn:
        return batch_object(await request_service.retry_batch(conn, user, batch_id, st.now()))


@router.post("/batches/{batch_id}/clone", response_model=Batch)
async def clone_batch(batch_id: str, user: UserDep, st: StateDep) -> Batch:
    async with st.db.connection() as conn:
        return batch_object(await request_service.clone_batch(conn, user, batch_id, st.now()))


@router.get("/workers", response_model=ListPage[Worker])
async def list_workers(user: UserDep, st: StateDep) -> ListPage[Any]:
    """Worker processes by pool with their state and in-flight count (admins only)."""
    if not user.is_admin:
        raise Forbidden()
    async with st.db.connection() as conn:
        rows = await worker_rows.list_recent(conn)
    data = [
        Worker(
            id=r["id"],
            pool=r["pool"],
            location=r["location"],
            host=r["host"],
            pid=r["pid"],
            state=r["state"],
            in_flight=r["in_flight"],
            started_at=ts(r["started_at"]),
            heartbeat_at=ts(r["heartbeat_at"]),
        )
        for r in rows
    ]
    return page(data, False)


# -- models ---------------------------------------------------------------------------------


@router.get("/models", response_model=ModelList)
async def list_models(user: UserDep, st: StateDep) -> ModelList:
    data = [
        Model(id=name, created=0, owned_by="inferbatch")
        for name in await st.engines.served_models()
    ]
    return ModelList(data=data)
