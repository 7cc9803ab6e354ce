"""OpenAI's Uploads API (``/v1/uploads``): thin routes over
:mod:`inferbatch.services.upload_sessions`, typed by :mod:`inferbatch.protocol.uploads`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from inferbatch.api.deps import AppState, IdempotencyHeader, current_user, state
from inferbatch.domain import FileRecord, Principal, UploadPartRecord, UploadRecord
from inferbatch.protocol.uploads import (
    Upload,
    UploadCompleteRequest,
    UploadCreateRequest,
    UploadPart,
)
from inferbatch.services import idempotency, upload_sessions
from inferbatch.services.serialize import file_object

router = APIRouter(prefix="/v1")

UserDep = Annotated[Principal, Depends(current_user)]
StateDep = Annotated[AppState, Depends(state)]

PART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def upload_object(upload: UploadRecord, now: datetime, file: FileRecord | None = None) -> Upload:
    return Upload(
        id=upload.id,
        bytes=upload.bytes,
        created_at=int(upload.created_at.timestamp()),
        expires_at=int(upload.expires_at.timestamp()),
        filename=upload.filename,
        purpose=upload.purpose,
        status=upload_sessions.visible_status(upload, now),
        file=file_object(file) if file is not None else None,
    )


def part_object(part: UploadPartRecord) -> UploadPart:
    return UploadPart(
        id=part.id, created_at=int(part.created_at.timestamp()), upload_id=part.upload_id
    )


@router.post("/uploads", response_model=Upload)
async def create_upload(
    body: UploadCreateRequest,
    user: UserDep,
    st: StateDep,
    idempotency_key: IdempotencyHeader = None,
) -> Upload:
    now = st.now()
    key = idempotency.parse(idempotency_key, "POST /v1/uploads", body.model_dump_json())
    async with st.db.connection() as conn:
        upload = await upload_sessions.create(conn, user, body, st.settings, now, key)
    return upload_object(upload, now)


@router.post("/uploads/{upload_id}/parts", response_model=UploadPart, openapi_extra=PART_BODY)
async def add_upload_part(
    upload_id: str, request: Request, user: UserDep, st: StateDep
) -> UploadPart:
    part = await upload_sessions.add_part(
        st.db,
        st.blobs,
        st.settings,
        user,
        upload_id,
        content_type=request.headers.get("content-type", ""),
        content_length=request.headers.get("content-length"),
        body=request.stream(),
        now=st.now(),
    )
    return part_object(part)


@router.post("/uploads/{upload_id}/complete", response_model=Upload)
async def complete_upload(
    upload_id: str, body: UploadCompleteRequest, user: UserDep, st: StateDep
) -> Upload:
    now = st.now()
    upload, file = await upload_sessions.complete(st.db, st.blobs, user, upload_id, body, now)
    return upload_object(upload, now, file)


@router.post("/uploads/{upload_id}/cancel", response_model=Upload)
async def cancel_upload(upload_id: str, user: UserDep, st: StateDep) -> Upload:
    now = st.now()
    upload = await upload_sessions.cancel(st.db, st.blobs, user, upload_id, now)
    return upload_object(upload, now)
