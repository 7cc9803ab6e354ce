"""Ingest: validate a batch's input file, hash each request and queue it, atomically.

The file is read line by line in a worker thread (constant memory), converted to COPY
rows and streamed into ``request_inputs`` inside the transaction that holds the batch row;
one ``INSERT ... SELECT`` then queues them (their narrow ``requests`` rows). Any invalid
line rolls the rows back and fails the batch with line-numbered errors; a valid file moves
the batch to ``in_progress`` in the same commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

from inferbatch import residency
from inferbatch.blobstore import BlobStore
from inferbatch.db import batches, dedup, files
from inferbatch.db import locations as location_sets
from inferbatch.db.requests import Tally, notify_queued, total
from inferbatch.db.types import Conn, Pool
from inferbatch.domain import MESSAGES_ENDPOINT, BatchRecord
from inferbatch.metrics import SchedulerMetrics
from inferbatch.scheduler.validation import (
    MAX_LISTED_ERRORS,
    LineError,
    ParsedLine,
    parse_line,
    too_many,
)

log = logging.getLogger(__name__)

CHUNK_LINES = 2000

COPY_INPUTS = """
COPY request_inputs (batch_id, line, custom_id, url, model, body, input_hash, prefix_key)
FROM STDIN
"""

QUEUE_INPUTS = """
INSERT INTO requests (id, batch_id, priority, batch_created_at, deadline_at, prefix_key,
    locations, project_id)
SELECT id, batch_id, %(priority)s, %(created)s, %(deadline)s, prefix_key, %(locations)s,
    %(project)s
FROM request_inputs WHERE batch_id = %(batch)s
"""
"""``locations``: the batch's allowed locations in canonical form, NULL for anywhere
(:func:`inferbatch.residency.from_metadata`); written once, kept by every later move, like
``project_id`` (what the spot pool's fair share groups by)."""

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(value: str) -> str:
    """Escape a value for PostgreSQL's COPY text format."""
    return value.translate(_COPY_ESCAPES)


@dataclass
class _Validator:
    """Consumes an input file chunk by chunk; runs in a thread, one chunk at a time."""

    batch: BatchRecord
    reader: BinaryIO
    max_requests: int
    line: int = 0
    count: int = 0
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    done: bool = False

    def _error(self, err: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(err)

    def next_chunk(self) -> bytes:
        """Validate up to CHUNK_LINES lines; returns their COPY data (empty once the
        input is known to be invalid, since those rows will be rolled back)."""
        prefix = f"{self.batch.id}\t"
        url = copy_text(self.batch.endpoint)
        out: list[str] = []
        for _ in range(CHUNK_LINES):
            raw = self.reader.readline()
            if not raw:
                self.done = True
                break
            self.line += 1
            if not raw.strip():
                continue
            self.count += 1
            if self.count > self.max_requests:
                self._error(too_many(self.max_requests, self.line))
                self.done = True
                break
            parsed = parse_line(raw, self.line, self.batch.endpoint)
            if isinstance(parsed, LineError):
                self._error(parsed)
                continue
            if len(self.models) < 2:
                self.models.add(parsed.model)
            if self.error_count == 0:
                out.append(self._row(parsed, prefix, url))
        return "".join(out).encode()

    @staticmethod
    def _row(p: ParsedLine, prefix: str, url: str) -> str:
        return (
            f"{prefix}{p.line}\t{copy_text(p.custom_id)}\t{url}\t{copy_text(p.model)}\t"
            f"{copy_text(p.body_json)}\t\\\\x{p.input_hash.hex()}\t{p.prefix_key}\n"
        )


async def _duplicate_errors(conn: Conn, batch_id: str) -> list[LineError]:
    cur = await conn.execute(
        """
        SELECT custom_id, array_agg(line ORDER BY line) AS lines FROM request_inputs
        WHERE batch_id = %s GROUP BY custom_id HAVING count(*) > 1
        ORDER BY min(line) LIMIT %s
        """,
        (batch_id, MAX_LISTED_ERRORS),
    )
    errors: list[LineError] = []
    for row in await cur.fetchall():
        first, *rest = row["lines"]
        for line in rest:
            errors.append(
                LineError(
                    "duplicate_custom_id",
                    f"Duplicate custom_id {row['custom_id']!r} (first on line {first}).",
                    line,
                    param="custom_id",
                )
            )
    errors.sort(key=lambda e: e.line or 0)
    return errors[:MAX_LISTED_ERRORS]


class _Invalid(Exception):
    """Raised inside the savepoint to roll back the copied rows."""

    def __init__(self, errors: list[LineError], total: int) -> None:
        self.errors = errors
        self.total = total


def _error_entries(errors: list[LineError], total: int) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = [e.as_dict() for e in errors]
    if total > len(errors):
        entries.append(
            {
                "code": "more_errors",
                "message": f"{total - len(errors)} more invalid lines are not listed.",
                "param": None,
                "line": None,
            }
        )
    return entries


async def _copy_input(
    conn: Conn, batch: BatchRecord, reader: BinaryIO, max_requests: int
) -> _Validator:
    validator = _Validator(batch=batch, reader=reader, max_requests=max_requests)
    async with conn.cursor().copy(COPY_INPUTS) as copy:
        while not validator.done:
            data = await asyncio.to_thread(validator.next_chunk)
            if data:
                await copy.write(data)
    return validator


async def ingest_next(
    pool: Pool,
    blobs: BlobStore,
    *,
    max_requests: int,
    now: Callable[[], datetime],
    dedup_horizon_seconds: float = 30 * 86400.0,
    metrics: SchedulerMetrics | None = None,
    max_message_requests: int | None = None,
) -> str | None:
    """Ingest the oldest batch waiting for it; returns its id, or None if none waits.
    Deduplication reuses outputs that finished within ``dedup_horizon_seconds``. A Message
    Batch (endpoint ``/v1/messages``) may hold ``max_message_requests`` requests (default
    ``max_requests``), the limit its create checked."""
    limits = (max_requests, max_message_requests or max_requests)
    batch_id, queued, reused = await _ingest(pool, blobs, limits, now, dedup_horizon_seconds)
    if metrics and batch_id is not None:
        metrics.ingest_batches.labels("queued" if queued else "failed").inc()
        metrics.ingested_lines.inc(queued)
        metrics.tallied("deduplicated", reused)
        metrics.dedup_hits.labels("reused").inc(total(reused))
        metrics.dedup_tokens_saved.inc(sum(t.tokens for t in reused))
    return batch_id


async def _ingest(
    pool: Pool,
    blobs: BlobStore,
    limits: tuple[int, int],
    now: Callable[[], datetime],
    dedup_horizon_seconds: float,
) -> tuple[str | None, int, list[Tally]]:
    """(batch id or None, requests queued, requests completed from earlier output)."""
    async with pool.connection() as conn, conn.transaction():
        batch = await batches.next_to_ingest(conn)
        if batch is None:
            return None, 0, []
        record = await files.get(conn, batch.input_file_id, None)
        if record is None or not await asyncio.to_thread(blobs.exists, record.blob_key):
            error = LineError("file_not_found", "The input file no longer exists.", None)
            await batches.mark_invalid(conn, batch.id, [error.as_dict()], now())
            return batch.id, 0, []
        try:
            async with conn.transaction():
                reader = await asyncio.to_thread(blobs.open_reader, record.blob_key)
                try:
                    limit = limits[1] if batch.endpoint == MESSAGES_ENDPOINT else limits[0]
                    v = await _copy_input(conn, batch, reader, limit)
                finally:
                    await asyncio.to_thread(reader.close)
                if v.error_count:
                    raise _Invalid(v.errors, v.error_count)
                if v.count == 0:
                    raise _Invalid([LineError("empty_file", "The input file is empty.", None)], 1)
                dups = await _duplicate_errors(conn, batch.id)
                if dups:
                    raise _Invalid(dups, len(dups))
                allowed = residency.from_metadata(batch.metadata)
                if allowed is not None:
                    await location_sets.register(conn, allowed)
                await conn.execute(
                    QUEUE_INPUTS,
                    {
                        "batch": batch.id,
                        "priority": batch.priority,
                        "created": batch.created_at,
                        "deadline": batch.deadline_at,
                        "locations": list(allowed) if allowed is not None else None,
                        "project": batch.project_id,
                    },
                )
        except _Invalid as invalid:
            await batches.mark_invalid(
                conn, batch.id, _error_entries(invalid.errors, invalid.total), now()
            )
            log.info(
                "batch %s failed validation: %d errors",
                batch.id,
                invalid.total,
                extra={"batch_id": batch.id},
            )
            return batch.id, 0, []
        reused, following = await dedup.deduplicate_batch(
            conn, batch.id, batch.owner_id, batch.dedup_scope, dedup_horizon_seconds
        )
        if reused or following:
            log.info(
                "batch %s: %d reused earlier outputs, %d follow identical requests",
                batch.id,
                total(reused),
                following,
                extra={"batch_id": batch.id},
            )
        model = next(iter(v.models)) if len(v.models) == 1 else None
        await batches.mark_ingested(conn, batch.id, total=v.count, model=model, now=now())
        await notify_queued(conn)
        log.info("batch %s ingested: %d requests", batch.id, v.count, extra={"batch_id": batch.id})
        return batch.id, v.count, reused
