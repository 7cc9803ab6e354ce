"""Domain objects -> OpenAI wire shapes (the official SDK's types are the contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from inferbatch.domain import BatchRecord, FileRecord


def ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def file_object(f: FileRecord) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": ts(f.created_at),
        "expires_at": ts(f.expires_at),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
    }


def batch_object(b: BatchRecord) -> dict[str, Any]:
    return {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "model": b.model,
        "errors": {"object": "list", "data": b.errors} if b.errors else None,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": ts(b.created_at),
        "in_progress_at": ts(b.in_progress_at),
        "expires_at": ts(b.deadline_at),
        "finalizing_at": ts(b.finalizing_at),
        "completed_at": ts(b.completed_at),
        "failed_at": ts(b.failed_at),
        "expired_at": ts(b.expired_at),
        "cancelling_at": ts(b.cancelling_at),
        "cancelled_at": ts(b.cancelled_at),
        "request_counts": {
            "total": b.total_count,
            "completed": b.completed_count,
            "failed": b.failed_count,
            "deduplicated": b.deduplicated_count,
            "escalated": b.escalated_count,
        },
        "usage": {
            "input_tokens": b.input_tokens,
            "input_tokens_details": {"cached_tokens": b.cached_tokens},
            "output_tokens": b.output_tokens,
            "output_tokens_details": {"reasoning_tokens": b.reasoning_tokens},
            "total_tokens": b.input_tokens + b.output_tokens,
        },
        "metadata": b.metadata,
        "output_expires_after": (
            {"anchor": "created_at", "seconds": b.output_expires_seconds}
            if b.output_expires_seconds
            else None
        ),
        "requests_expire_at": ts(b.requests_expire_at),
        "requests_pruned_at": ts(b.requests_pruned_at),
    }


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
