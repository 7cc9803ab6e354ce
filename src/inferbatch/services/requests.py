"""Per-request views and re-runs: list a batch's requests, show one, retry failed ones,
clone a batch."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from inferbatch.config import parse_duration
from inferbatch.db import batches as batch_rows
from inferbatch.db import files as file_rows
from inferbatch.db import requests as request_rows
from inferbatch.db.types import Conn
from inferbatch.domain import BatchRecord, Principal, project_filter
from inferbatch.errors import Conflict, InvalidRequest, NotFound
from inferbatch.ids import new_id, parse_request_public_id, request_public_id
from inferbatch.protocol.openai import BatchRequest
from inferbatch.services.batches import get as get_batch
from inferbatch.services.serialize import ts

REQUEST_STATUSES = ("queued", "running", "waiting", "completed", "failed", "cancelled", "expired")


def request_object(row: dict[str, Any], *, detail: bool = False) -> BatchRequest:
    obj: dict[str, Any] = {
        "id": request_public_id(row["id"]),
        "object": "batch.request",
        "batch_id": row["batch_id"],
        "line": row["line"],
        "custom_id": row["custom_id"],
        "model": row["model"],
        "status": row["status"],
        "pool": row["pool"],
        "attempts": row["attempts"],
        "failed_attempts": row["failed_attempts"],
        "interruptions": row["interruptions"],
        "worker_id": row["worker_id"],
        "started_at": ts(row["started_at"]),
        "finished_at": ts(row["finished_at"]),
        "response_status": row["response_status"],
        "error": row["error"],
        "deduplicated_from": request_public_id(row["dedup_of"]) if row["dedup_of"] else None,
        "escalation_reason": row["escalation_reason"],
        "escalated_at": ts(row["escalated_at"]),
        "usage": {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
        },
    }
    if detail:
        obj["url"] = row["url"]
        obj["body"] = row["body"]
        obj["response"] = (
            {
                "status_code": row["response_status"],
                "request_id": row["response_request_id"],
                "body": row["response_body"],
            }
            if row["response_status"] is not None
            else None
        )
    return BatchRequest.model_validate(obj)


async def list_requests(
    conn: Conn,
    user: Principal,
    batch_id: str,
    *,
    status: str | None,
    custom_id: str | None,
    after: str | None,
    limit: int,
) -> tuple[list[BatchRequest], bool]:
    await get_batch(conn, user, batch_id)
    if status is not None and status not in REQUEST_STATUSES:
        raise InvalidRequest(
            f"status must be one of {', '.join(REQUEST_STATUSES)}.", param="status"
        )
    after_line = 0
    if after is not None:
        after_id = parse_request_public_id(after)
        row = await request_rows.get_detail(conn, after_id) if after_id is not None else None
        if row is None or row["batch_id"] != batch_id:
            raise InvalidRequest(f"after {after!r} is not a request of this batch.", param="after")
        after_line = row["line"]
    rows = await request_rows.list_for_batch(
        conn, batch_id, status=status, custom_id=custom_id, after_line=after_line, limit=limit
    )
    return [request_object(r) for r in rows[:limit]], len(rows) > limit


async def get_request(conn: Conn, user: Principal, public_id: str) -> dict[str, Any]:
    request_id = parse_request_public_id(public_id)
    row = await request_rows.get_detail(conn, request_id) if request_id is not None else None
    if row is None or await batch_rows.get(conn, row["batch_id"], project_filter(user)) is None:
        raise NotFound(f"No request with id {public_id!r}.")
    return row


async def _requeue(conn: Conn, batch: BatchRecord, request_id: int | None, now: datetime) -> int:
    # the lock orders this with the finalizer: files are written either before (the batch
    # is reopened) or after (the finalizer sees the re-queued requests and steps back)
    batch = await batch_rows.lock(conn, batch.id) or batch
    if batch.status == "finalizing":
        await batch_rows.unfinalize(conn, batch.id)
    elif batch.status == "completed":
        if not await batch_rows.reopen(conn, batch.id, now):
            raise Conflict(f"Batch {batch.id!r} is past its deadline; clone it instead.")
    elif batch.status != "in_progress":
        raise Conflict(
            f"Batch {batch.id!r} is {batch.status}; only failed requests of an "
            "in-progress or completed batch can be retried."
        )
    return await request_rows.requeue_failed(conn, batch.id, request_id)


async def retry_request(conn: Conn, user: Principal, public_id: str, now: datetime) -> BatchRequest:
    """Send one failed request back to the queue with a fresh retry budget."""
    row = await get_request(conn, user, public_id)
    if row["status"] != "failed":
        raise Conflict(f"Request {public_id!r} is {row['status']}; only failed ones retry.")
    batch = await get_batch(conn, user, row["batch_id"])
    await _requeue(conn, batch, row["id"], now)
    fresh = await request_rows.get_detail(conn, row["id"])
    assert fresh is not None
    return request_object(fresh, detail=True)


async def retry_batch(conn: Conn, user: Principal, batch_id: str, now: datetime) -> BatchRecord:
    """Send every failed request of a batch back to the queue."""
    batch = await get_batch(conn, user, batch_id)
    if batch.failed_count == 0 and batch.status in ("completed", "in_progress"):
        cur = await conn.execute(
            "SELECT 1 FROM request_results WHERE batch_id = %s AND status = 'failed' LIMIT 1",
            (batch_id,),
        )
        if await cur.fetchone() is None:
            raise Conflict(f"Batch {batch_id!r} has no failed requests.")
    await _requeue(conn, batch, None, now)
    return await get_batch(conn, user, batch_id)


async def clone_batch(conn: Conn, user: Principal, batch_id: str, now: datetime) -> BatchRecord:
    """A new batch over the same input file, endpoint, window and metadata."""
    source = await get_batch(conn, user, batch_id)
    if await file_rows.get(conn, source.input_file_id, None) is None:
        raise Conflict(f"The input file of batch {batch_id!r} was deleted; upload it again.")
    clone = await batch_rows.insert(
        conn,
        batch_id=new_id("batch_"),
        owner_id=source.owner_id,
        project_id=source.project_id,
        input_file_id=source.input_file_id,
        endpoint=source.endpoint,
        completion_window=source.completion_window,
        deadline_at=now + parse_duration(source.completion_window),
        created_at=now,
        priority=source.priority,
        dedup_scope=source.dedup_scope,
        metadata=source.metadata,
        output_expires_seconds=source.output_expires_seconds,
    )
    await batch_rows.add_event(conn, clone.id, "validating", f"cloned from {batch_id}")
    return clone
