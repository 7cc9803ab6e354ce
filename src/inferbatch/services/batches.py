"""Creating, listing and cancelling batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from inferbatch import residency
from inferbatch.config import Settings, parse_duration
from inferbatch.db import batches, files
from inferbatch.db.types import Conn
from inferbatch.domain import ENDPOINTS, BatchRecord, Principal, project_filter
from inferbatch.errors import Conflict, InvalidRequest, NotFound
from inferbatch.ids import new_id
from inferbatch.services import admission, quotas
from inferbatch.services import idempotency as idempotency_service
from inferbatch.services.admission import AdmissionRules
from inferbatch.services.idempotency import IdempotencyKey
from inferbatch.services.webhooks import new_secret

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MIN_EXPIRY = 3600
MAX_EXPIRY = 30 * 86400
"""A file's ``expires_after`` and a batch's ``output_expires_after``: 1 hour to 30 days."""
MAX_PRIORITY = 1_000_000


@dataclass(frozen=True)
class BatchOptions:
    priority: int
    dedup_scope: str


def validate_metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequest(
            f"metadata may hold at most {MAX_METADATA_PAIRS} pairs.", param="metadata"
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequest(
                f"metadata keys are at most {MAX_METADATA_KEY} characters.", param="metadata"
            )
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidRequest(
                f"metadata values are at most {MAX_METADATA_VALUE} characters.",
                param="metadata",
            )
    return metadata


def with_allowed_locations(
    metadata: dict[str, str] | None, allowed_locations: list[str] | None
) -> dict[str, str] | None:
    """Validate a batch's data-residency restriction (see :mod:`inferbatch.residency`):
    ``metadata.allowed_locations``, or the ``allowed_locations`` extension field, which is
    stored there in canonical form (so a clone keeps it and the batch object shows it)."""
    key = residency.METADATA_KEY
    if allowed_locations is None:
        if metadata is not None and key in metadata:
            try:
                residency.parse(metadata[key])
            except residency.BadLocations as exc:
                raise InvalidRequest(f"metadata.{key}: {exc}", param=f"metadata.{key}") from exc
        return metadata
    try:
        entries = residency.canonical(allowed_locations)
    except residency.BadLocations as exc:
        raise InvalidRequest(f"{key}: {exc}", param=key) from exc
    if metadata is not None and key in metadata:
        try:
            same = residency.parse(metadata[key]) == entries
        except residency.BadLocations:
            same = False
        if not same:
            raise InvalidRequest(f"{key} and metadata.{key} disagree; give one of them.", param=key)
    return validate_metadata({**(metadata or {}), key: ",".join(entries)})


def options_from_metadata(metadata: dict[str, str] | None, settings: Settings) -> BatchOptions:
    """Priority (``metadata.priority``, integer >= 1) and dedup scope (``metadata.dedup``)."""
    metadata = metadata or {}
    raw_priority = metadata.get("priority", "1")
    try:
        priority = int(raw_priority)
    except ValueError:
        priority = 0
    if priority < 1 or priority > MAX_PRIORITY:
        raise InvalidRequest(
            "metadata.priority must be an integer from 1 (normal); 5 is medium, 10+ high.",
            param="metadata.priority",
        )
    scope = metadata.get("dedup", settings.default_dedup_scope)
    if scope not in ("user", "global", "off"):
        raise InvalidRequest(
            "metadata.dedup must be 'user', 'global' or 'off'.", param="metadata.dedup"
        )
    if scope == "global" and not settings.allow_global_dedup:
        raise InvalidRequest(
            "Global deduplication is disabled on this deployment.", param="metadata.dedup"
        )
    return BatchOptions(priority=priority, dedup_scope=scope)


def priority_filter(value: str | None) -> int | None:
    """The ``priority`` query parameter of a batch list: ``None`` (no filter) or an integer
    priority to match exactly, as ``metadata.priority`` accepts it on create."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PRIORITY:
        raise InvalidRequest(
            f"priority must be an integer from 1 to {MAX_PRIORITY} (1 normal, 5 medium, 10+ high).",
            param="priority",
        )
    return int(value)


def parse_completion_window(text: str, settings: Settings) -> timedelta:
    """A completion window within the deployment's bounds."""
    try:
        window = parse_duration(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="completion_window") from exc
    low, high = settings.completion_window_bounds
    if not low <= window <= high:
        raise InvalidRequest(
            f"completion_window must be between {settings.min_completion_window} and "
            f"{settings.max_completion_window}.",
            param="completion_window",
        )
    return window


def expiry_seconds(seconds: int, param: str) -> int:
    """``seconds`` when it is within :data:`MIN_EXPIRY` .. :data:`MAX_EXPIRY`."""
    if not MIN_EXPIRY <= seconds <= MAX_EXPIRY:
        raise InvalidRequest(
            f"{param} must be between {MIN_EXPIRY} (1 hour) and {MAX_EXPIRY} (30 days).",
            param=param,
        )
    return seconds


@dataclass(frozen=True, slots=True)
class NewBatch:
    """A batch to create, checked against the deployment's rules (by :func:`new_batch`)."""

    input_file_id: str
    endpoint: str
    completion_window: str
    window: timedelta
    metadata: dict[str, str] | None
    options: BatchOptions
    output_expires_seconds: int | None
    callback_url: str | None = None
    admission: AdmissionRules | None = None
    """How the deployment admits it (``services/admission.py``); None: not checked."""


def new_batch(
    settings: Settings,
    *,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None = None,
    output_expires_seconds: int | None = None,
    callback_url: str | None = None,
    allowed_locations: list[str] | None = None,
) -> NewBatch:
    """What the API's create body and the portal's form both describe, validated:
    ``InvalidRequest`` naming the field when a rule is broken. ``allowed_locations``
    restricts where the requests run (:func:`with_allowed_locations`)."""
    if not input_file_id:
        raise InvalidRequest("input_file_id is required.", param="input_file_id")
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    window = parse_completion_window(completion_window, settings)
    metadata = with_allowed_locations(validate_metadata(metadata), allowed_locations)
    return NewBatch(
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=completion_window,
        window=window,
        metadata=metadata,
        options=options_from_metadata(metadata, settings),
        output_expires_seconds=(
            expiry_seconds(output_expires_seconds, "output_expires_after.seconds")
            if output_expires_seconds is not None
            else None
        ),
        callback_url=callback_url,
        admission=AdmissionRules.from_settings(settings),
    )


async def create(
    conn: Conn,
    user: Principal,
    new: NewBatch,
    now: datetime,
    idempotency: IdempotencyKey | None = None,
) -> BatchRecord:
    """Insert the batch (``validating``) with its first estimated completion; the scheduler
    validates the input file's lines. Refused (``window_too_short``) when admission says so,
    and (429) when the project's quotas leave no room for it: it holds the file's line count
    and token estimate (none for a file without them, such as an Uploads API file). Under an
    idempotency key already used for the same request, the batch made then."""
    batch_id = new_id("batch_")
    earlier = await idempotency_service.claim(conn, user, idempotency, batch_id, now)
    if earlier is not None:
        return await get(conn, user, earlier)
    record = await files.get(conn, new.input_file_id, project_filter(user))
    if record is None:
        raise NotFound(f"No file with id {new.input_file_id!r}.", param="input_file_id")
    if record.purpose != "batch":
        raise InvalidRequest(
            f"File {new.input_file_id!r} has purpose {record.purpose!r}; batches need 'batch'.",
            param="input_file_id",
        )
    admitted = admission.Outcome()
    if new.admission is not None:
        admitted = await admission.check(
            conn,
            new.admission,
            requests=record.line_count,
            priority=new.options.priority,
            window=new.window,
            now=now,
        )
    requests, tokens = record.line_count or 0, record.token_estimate or 0
    await quotas.admit_batch(conn, record.project_id, requests=requests, tokens=tokens, now=now)
    return await batches.insert(
        conn,
        batch_id=batch_id,
        owner_id=user.id,
        project_id=record.project_id,
        quota_requests=requests,
        quota_tokens=tokens,
        input_file_id=new.input_file_id,
        endpoint=new.endpoint,
        completion_window=new.completion_window,
        deadline_at=now + new.window,
        created_at=now,
        priority=new.options.priority,
        dedup_scope=new.options.dedup_scope,
        metadata=new.metadata,
        output_expires_seconds=new.output_expires_seconds,
        callback_url=new.callback_url,
        callback_secret=new_secret() if new.callback_url else None,
        estimated_completion_at=admitted.estimated_completion_at,
        warnings=admitted.warnings,
    )


async def get(conn: Conn, user: Principal, batch_id: str) -> BatchRecord:
    batch = await batches.get(conn, batch_id, project_filter(user))
    if batch is None:
        raise NotFound(f"No batch with id {batch_id!r}.")
    return batch


async def cancel(conn: Conn, user: Principal, batch_id: str, now: datetime) -> BatchRecord:
    batch = await get(conn, user, batch_id)
    if batch.status in ("cancelling", "cancelled"):
        return batch
    if not await batches.request_cancel(conn, batch_id, now):
        raise Conflict(f"Batch {batch_id!r} is {batch.status} and cannot be cancelled.")
    return await get(conn, user, batch_id)
