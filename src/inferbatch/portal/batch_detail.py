"""One batch: summary, live progress, timeline, output and error previews, charts, and its
request table. Live parts are htmx fragments polled while the batch is unfinished."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from inferbatch.db import batches as batch_rows
from inferbatch.db import browse
from inferbatch.db import files as file_rows
from inferbatch.domain import TERMINAL_BATCH_STATUSES, BatchRecord
from inferbatch.errors import StorageUnavailable
from inferbatch.metrics import LATENCY_BUCKETS
from inferbatch.portal import charts
from inferbatch.portal.checks import head_lines
from inferbatch.portal.costs import money
from inferbatch.portal.formatting import number
from inferbatch.portal.web import Page, PageDep, PortalRoute
from inferbatch.services import batches as batch_service
from inferbatch.services import requests as request_service
from inferbatch.services.costs import batch_cost
from inferbatch.services.requests import REQUEST_STATUSES

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

PREVIEW_LINES = 10
REQUEST_PAGE = 50


def finished_at(batch: BatchRecord) -> datetime | None:
    return batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at


async def live(page: Page, batch: BatchRecord) -> dict[str, Any]:
    """Progress counts, prediction, timeline, details and previews of one batch."""
    now = page.st.now()
    terminal = batch.status in TERMINAL_BATCH_STATUSES
    async with page.st.db.connection() as conn:
        if terminal:
            # Finished: exact counts by status (polling has stopped, so this runs once).
            counts = await browse.request_status_counts(conn, batch.id)
        else:
            # Running: the batch row's counters plus the (small) unsettled rows.
            counts = {"completed": batch.completed_count, "failed": batch.failed_count}
            for r in await browse.live_requests(conn, None, batch_id=batch.id):
                counts[r["status"]] = counts.get(r["status"], 0) + int(r["n"])
        predicted = await browse.predicted_finish(conn, batch.id, now)
        events = await batch_rows.events(conn, batch.id)
        input_file = await file_rows.get(conn, batch.input_file_id, None)
        owner = await browse.user_name(conn, batch.owner_id) if page.user.is_admin else None
    total = batch.total_count
    completed, failed = counts.get("completed", 0), counts.get("failed", 0)
    queued, running = counts.get("queued", 0), counts.get("running", 0)
    waiting = counts.get("waiting", 0)
    not_run = counts.get("cancelled", 0) + counts.get("expired", 0)
    if batch.status == "cancelling":
        not_run = max(0, total - completed - failed - queued - running - waiting)
    return {
        "batch": batch,
        "terminal": terminal,
        "completed": completed,
        "failed": failed,
        "queued": queued,
        "running": running,
        "waiting": waiting,
        "not_run": not_run,
        "done": completed + failed,
        "share": {
            name: (100 * n / total if total else 0)
            for name, n in (
                ("completed", completed),
                ("failed", failed),
                ("running", running),
                ("not_run", not_run),
            )
        },
        "predicted": predicted,
        "events": events,
        "input_file": input_file,
        "owner": owner,
        "output_preview": await _preview(page, batch.output_file_id),
        "error_preview": await _preview(page, batch.error_file_id),
    }


async def _preview(page: Page, file_id: str | None) -> list[dict[str, Any]]:
    """The first lines of an output or error file, parsed where they parse."""
    if file_id is None:
        return []
    async with page.st.db.connection() as conn:
        record = await file_rows.get(conn, file_id, None)
    if record is None:
        return []
    try:
        lines = await asyncio.to_thread(head_lines, page.st.blobs, record.blob_key, PREVIEW_LINES)
    except (FileNotFoundError, StorageUnavailable):
        return []  # the page still shows the batch; the preview waits for the file storage
    out: list[dict[str, Any]] = []
    for raw in lines:
        try:
            parsed: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        data = parsed if isinstance(parsed, dict) else None
        out.append({"raw": raw, "data": data, "summary": _summary(data)})
    return out


def _summary(line: dict[str, Any] | None) -> str | None:
    """The gist of an output line: the reply's text, or the embeddings' shape."""
    body = ((line or {}).get("response") or {}).get("body")
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])[:300]
        if isinstance(choices[0].get("text"), str):
            return str(choices[0]["text"])[:300]
    data = body.get("data")
    if isinstance(data, list) and data and isinstance(data[0], dict):
        vector = data[0].get("embedding")
        if isinstance(vector, list):
            return f"{len(data)} embedding(s) of {len(vector)} dimensions"
    return None


async def _requests(page: Page, batch_id: str, q: dict[str, str]) -> dict[str, Any]:
    status = q.get("status") if q.get("status") in REQUEST_STATUSES else None
    custom_id = (q.get("custom_id") or "").strip() or None
    after = q.get("after") or None
    async with page.st.db.connection() as conn:
        items, more = await request_service.list_requests(
            conn,
            page.user,
            batch_id,
            status=status,
            custom_id=custom_id,
            after=after,
            limit=REQUEST_PAGE,
        )
    rows = [r.model_dump() for r in items]
    params = {"status": status, "custom_id": custom_id}
    return {
        "requests": rows,
        "params": params,
        "after": after,
        "next_cursor": rows[-1]["id"] if rows and more else None,
        "statuses": REQUEST_STATUSES,
    }


async def _charts(page: Page, batch: BatchRecord) -> dict[str, Any]:
    start = batch.in_progress_at or batch.created_at
    end = finished_at(batch) or page.st.now()
    bucket = charts.pick_bucket(max((end - start).total_seconds(), 1.0))
    epoch = start.timestamp() // bucket * bucket
    since = datetime.fromtimestamp(epoch, tz=start.tzinfo)
    until = end + timedelta(seconds=bucket)
    async with page.st.db.connection() as conn:
        rows = await browse.activity_series(conn, None, since, bucket, batch_id=batch.id)
        counts = await browse.latency_histogram(
            conn, None, batch.created_at, LATENCY_BUCKETS, batch_id=batch.id
        )
        breakdown = await browse.pool_breakdown(conn, batch.id)
    throughput, pools = charts.activity_charts(rows, since, until, bucket, width=420)
    latency = charts.latency_chart("Latency (last attempt)", LATENCY_BUCKETS, counts, width=420)
    completed = [r for r in breakdown if r["status"] == "completed"]
    return {
        "charts": [throughput, pools, latency],
        "spot": sum(int(r["n"]) for r in completed if r["pool"] == "spot"),
        "dedicated": sum(int(r["n"]) for r in completed if r["pool"] == "dedicated"),
        "deduplicated": sum(int(r["deduplicated"]) for r in breakdown),
        "dedup_tokens": sum(int(r["dedup_tokens"]) for r in breakdown),
        "interruptions": sum(int(r["interruptions"]) for r in breakdown),
        "cost": _cost(batch),
    }


def _cost(batch: BatchRecord) -> dict[str, str] | None:
    """The batch's cost and savings as text, or None before any GPU time was counted."""
    cost = batch_cost(batch)
    if cost is None:
        return None
    c = cost.currency
    return {
        "amount": money(cost.amount, c),
        "spot_saved": money(cost.saved.spot, c),
        "dedup_saved": money(cost.saved.dedup, c),
        "all_dedicated": money(cost.all_dedicated_amount, c),
        "spot_seconds": number(cost.gpu_seconds.spot),
        "dedicated_seconds": number(cost.gpu_seconds.dedicated),
        "dedup_seconds": number(cost.gpu_seconds.dedup_saved),
    }


async def _batch(page: Page, batch_id: str) -> BatchRecord:
    async with page.st.db.connection() as conn:
        return await batch_service.get(conn, page.user, batch_id)


@router.get("/batches/{batch_id}")
async def batch_page(batch_id: str, request: Request, page: PageDep) -> HTMLResponse:
    batch = await _batch(page, batch_id)
    return page.render(
        "batch.html",
        live=await live(page, batch),
        table=await _requests(page, batch_id, dict(request.query_params)),
        stats=await _charts(page, batch),
    )


@router.get("/batches/{batch_id}/live")
async def batch_live(batch_id: str, request: Request, page: PageDep) -> HTMLResponse:
    batch = await _batch(page, batch_id)
    response = page.render("partials/batch_live.html", live=await live(page, batch))
    was = request.query_params.get("was")
    if batch.status in TERMINAL_BATCH_STATUSES and was not in TERMINAL_BATCH_STATUSES:
        # The batch just finished: the request table and charts refresh once more.
        response.headers["hx-trigger"] = "batch-finished"
    return response


@router.get("/batches/{batch_id}/requests")
async def batch_requests(batch_id: str, request: Request, page: PageDep) -> HTMLResponse:
    batch = await _batch(page, batch_id)
    table = await _requests(page, batch_id, dict(request.query_params))
    return page.render("partials/request_table.html", table=table, batch=batch)


@router.get("/batches/{batch_id}/charts")
async def batch_charts(batch_id: str, page: PageDep) -> HTMLResponse:
    batch = await _batch(page, batch_id)
    return page.render("partials/batch_charts.html", stats=await _charts(page, batch), batch=batch)
