"""New batch: upload an input file (or pick one), check it line by line, choose the options,
create. Uploads stream through the file service; creation goes through the batch service,
which applies the same rules as ``POST /v1/batches``."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.datastructures import FormData

from inferbatch.config import Settings
from inferbatch.db import files as file_rows
from inferbatch.domain import ENDPOINTS
from inferbatch.errors import InferbatchError, InvalidRequest
from inferbatch.portal.checks import FileCheck, check_file
from inferbatch.portal.session import Flash
from inferbatch.portal.web import ActionDep, Page, PageDep, PortalRoute
from inferbatch.services import batches as batch_service
from inferbatch.services import files as file_service
from inferbatch.services.batches import NewBatch

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

PRIORITIES = {"normal": "1", "medium": "5", "high": "10"}
WINDOWS = ("1h", "4h", "24h", "7d")
META_ROWS = 3
RESERVED_METADATA = ("priority", "dedup")


async def _recent_files(page: Page) -> list[Any]:
    async with page.st.db.connection() as conn:
        return await file_rows.list_page(
            conn, page.project, purpose="batch", after=None, limit=50, ascending=False
        )


def _defaults(page: Page) -> dict[str, Any]:
    return {
        "input_file_id": "",
        "endpoint": ENDPOINTS[0],
        "priority": "normal",
        "priority_custom": "",
        "completion_window": "24h",
        "dedup": "",
        "meta": [("", "")] * META_ROWS,
    }


async def _form_page(
    page: Page,
    values: dict[str, Any],
    status_code: int = 200,
    error: InferbatchError | None = None,
    check: FileCheck | None = None,
) -> HTMLResponse:
    return page.render(
        "batch_new.html",
        status_code,
        values=values,
        files=await _recent_files(page),
        endpoints=ENDPOINTS,
        windows=WINDOWS,
        error=error,
        check=check,
        allow_global=page.st.settings.allow_global_dedup,
        default_dedup=page.st.settings.default_dedup_scope,
    )


@router.get("/batches/new")
async def new_batch(request: Request, page: PageDep) -> HTMLResponse:
    values = _defaults(page)
    values["input_file_id"] = request.query_params.get("file", "")
    return await _form_page(page, values)


def _values(form: FormData) -> dict[str, Any]:
    def text(name: str) -> str:
        v = form.get(name)
        return v.strip() if isinstance(v, str) else ""

    keys = [k if isinstance(k, str) else "" for k in form.getlist("meta_key")]
    vals = [v if isinstance(v, str) else "" for v in form.getlist("meta_value")]
    meta = list(zip(keys, vals, strict=False))
    meta += [("", "")] * max(0, META_ROWS - len(meta))
    return {
        "input_file_id": text("input_file_id"),
        "endpoint": text("endpoint"),
        "priority": text("priority") or "normal",
        "priority_custom": text("priority_custom"),
        "completion_window": text("completion_window"),
        "dedup": text("dedup"),
        "meta": meta,
    }


def batch_from_form(values: dict[str, Any], settings: Settings) -> NewBatch:
    """The batch the form describes (priority and dedup are kept in metadata, where the
    API reads them too)."""
    metadata: dict[str, str] = {}
    for key, value in values["meta"]:
        key = key.strip()
        if not key:
            continue
        if key in RESERVED_METADATA:
            raise InvalidRequest(
                f"Set {key} with its own field, not as a metadata key.", param="metadata"
            )
        metadata[key] = value
    if values["priority"] == "custom":
        metadata["priority"] = values["priority_custom"] or "1"
    else:
        metadata["priority"] = PRIORITIES.get(values["priority"], "1")
    if values["dedup"]:
        metadata["dedup"] = values["dedup"]
    if not values["input_file_id"]:
        raise InvalidRequest("Upload a file or pick one.", param="input_file_id")
    return batch_service.new_batch(
        settings,
        input_file_id=values["input_file_id"],
        endpoint=values["endpoint"],
        completion_window=values["completion_window"],
        metadata=metadata,
    )


@router.post("/batches/new")
async def create_batch(request: Request, page: ActionDep) -> Response:
    values = _values(await request.form())
    st = page.st
    try:
        new = batch_from_form(values, st.settings)
        record = await file_service.content(st.db, st.blobs, page.user, values["input_file_id"])
        if values["endpoint"] in ENDPOINTS:
            check = await check_file(
                st.blobs, record.blob_key, values["endpoint"], st.settings.max_requests_per_batch
            )
            if not check.ok:
                return await _form_page(page, values, 400, check=check)
        async with st.db.connection() as conn:
            batch = await batch_service.create(conn, page.user, new, st.now())
    except InferbatchError as exc:
        if exc.status_code >= 500:
            raise
        return await _form_page(page, values, exc.status_code, error=exc)
    return page.redirect(f"/batches/{batch.id}", Flash("success", "Batch created."))


@router.post("/files/upload")
async def upload(request: Request, page: ActionDep) -> HTMLResponse:
    """A multipart upload from the new-batch page (htmx sends the CSRF header). Answers
    the upload result, and out of band a file picker with the new file chosen."""
    st = page.st
    try:
        record = await file_service.upload(
            st.db,
            st.blobs,
            st.settings,
            page.user,
            content_type=request.headers.get("content-type", ""),
            content_length=request.headers.get("content-length"),
            body=request.stream(),
            now=st.now(),
        )
    except InferbatchError as exc:
        if exc.status_code >= 500:
            raise
        return page.render("partials/alert.html", 200, level="danger", message=exc.message)
    response = page.render(
        "partials/upload_result.html", record=record, files=await _recent_files(page)
    )
    response.headers["hx-trigger-after-settle"] = "recheck"
    return response


@router.get("/files/check")
async def check(request: Request, page: PageDep) -> HTMLResponse:
    """Line-by-line validation of the chosen file for the chosen endpoint."""
    file_id = request.query_params.get("input_file_id", "")
    endpoint = request.query_params.get("endpoint", "")
    if not file_id or endpoint not in ENDPOINTS:
        return page.render("partials/file_check.html", check=None, record=None)
    record = await file_service.content(page.st.db, page.st.blobs, page.user, file_id)
    result = await check_file(
        page.st.blobs, record.blob_key, endpoint, page.st.settings.max_requests_per_batch
    )
    return page.render("partials/file_check.html", check=result, record=record)


def attachment(filename: str) -> str:
    """A Content-Disposition value that cannot break out of the header, for any name."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get("/files/{file_id}/download")
async def download(file_id: str, page: PageDep) -> Response:
    record, chunks = await file_service.open_content(page.st.db, page.st.blobs, page.user, file_id)
    return StreamingResponse(
        chunks,
        media_type="application/jsonl",
        headers={
            "content-length": str(record.bytes),
            "content-disposition": attachment(record.filename),
            "x-content-type-options": "nosniff",
        },
    )
