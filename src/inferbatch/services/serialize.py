"""Domain objects -> wire models (``protocol.openai``; the official SDK's types are the
contract)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from inferbatch.domain import BatchRecord, FileRecord
from inferbatch.protocol.openai import (
    Batch,
    BatchErrors,
    BatchUsage,
    BatchWarning,
    ExpiresAfter,
    FileObject,
    InputTokensDetails,
    ListPage,
    OutputTokensDetails,
    RequestCounts,
)
from inferbatch.services.costs import batch_cost


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


def ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def file_object(f: FileRecord) -> FileObject:
    return FileObject(
        id=f.id,
        bytes=f.bytes,
        created_at=int(f.created_at.timestamp()),
        expires_at=ts(f.expires_at),
        filename=f.filename,
        purpose=f.purpose,
        status="processed",
        status_details=None,
    )


def batch_fields(b: BatchRecord) -> dict[str, object]:
    """The fields of :class:`Batch` for ``b`` (a subclass adds its own)."""
    return {
        "id": b.id,
        "endpoint": b.endpoint,
        "model": b.model,
        "errors": BatchErrors.model_validate({"data": b.errors}) if b.errors else None,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": int(b.created_at.timestamp()),
        "in_progress_at": ts(b.in_progress_at),
        "expires_at": ts(b.deadline_at),
        "finalizing_at": ts(b.finalizing_at),
        "completed_at": ts(b.completed_at),
        "failed_at": ts(b.failed_at),
        "expired_at": ts(b.expired_at),
        "cancelling_at": ts(b.cancelling_at),
        "cancelled_at": ts(b.cancelled_at),
        "request_counts": RequestCounts(
            total=b.total_count,
            completed=b.completed_count,
            failed=b.failed_count,
            deduplicated=b.deduplicated_count,
            escalated=b.escalated_count,
        ),
        "usage": BatchUsage(
            input_tokens=b.input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=b.cached_tokens),
            output_tokens=b.output_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=b.reasoning_tokens),
            total_tokens=b.input_tokens + b.output_tokens,
        ),
        "metadata": b.metadata,
        "output_expires_after": (
            ExpiresAfter(anchor="created_at", seconds=b.output_expires_seconds)
            if b.output_expires_seconds
            else None
        ),
        "requests_expire_at": ts(b.requests_expire_at),
        "requests_pruned_at": ts(b.requests_pruned_at),
        "callback_url": b.callback_url,
        "cost": batch_cost(b),
        "estimated_completion_at": ts(b.estimated_completion_at),
        "warnings": [BatchWarning.model_validate(w) for w in b.warnings] if b.warnings else None,
    }


def batch_object(b: BatchRecord) -> Batch:
    return Batch.model_validate(batch_fields(b))


def page(data: Sequence[_HasId], has_more: bool) -> ListPage[Any]:
    """A list page of wire models."""
    return ListPage[Any](
        data=list(data),
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )
