"""Finish batches: write the output and error files and move to a terminal status.

A batch is finished when all its requests settled (``completed``), when its deadline
passed with work left (``expired``: unsettled requests become ``batch_expired`` errors),
or when it was cancelled and nothing runs any more (``cancelled``). Every request appears
exactly once across the two files; ``request_counts`` are counted from what was written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from inferbatch.blobstore import BlobStore, BlobWriter, new_blob_key, writing
from inferbatch.db import batches, counters, files
from inferbatch.db import requests as queue
from inferbatch.db import retention as retention_rows
from inferbatch.db.types import Conn, Pool
from inferbatch.domain import BatchRecord
from inferbatch.ids import new_id, request_public_id
from inferbatch.metrics import SchedulerMetrics
from inferbatch.pricing import PriceTable

log = logging.getLogger(__name__)

FLUSH_BYTES = 1 << 20

SETTLED_ERRORS = {
    "expired": {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    },
    "cancelled": {
        "code": "batch_cancelled",
        "message": "This request was not executed because the batch was cancelled.",
    },
}


def _body_json(text: str | None) -> bytes:
    """A stored response body (JSON text) as it goes into a JSONL line: as stored, unless
    it spans lines (then compacted)."""
    if text is None:
        return b"null"
    if "\n" in text or "\r" in text:
        return orjson.dumps(orjson.loads(text))
    return text.encode()


def result_line(row: dict[str, Any]) -> tuple[bool, bytes]:
    """(goes to the output file, JSONL line) for one request row in OpenAI's format. The
    response body is spliced in as the stored text, not parsed and rendered again."""
    status = row["status"]
    response = b"null"
    if row["response_status"] is not None and status not in SETTLED_ERRORS:
        response = b'{"status_code":%d,"request_id":%s,"body":%s}' % (
            row["response_status"],
            orjson.dumps(row["response_request_id"]),
            _body_json(row["response_body"]),
        )
    error = None
    if status in SETTLED_ERRORS:
        error = SETTLED_ERRORS[status]
    elif status != "completed" and row["response_status"] is None:
        error = row["error"] or {"code": "request_failed", "message": "The request failed."}
    line = b'{"id":%s,"custom_id":%s,"response":%s,"error":%s}\n' % (
        orjson.dumps(request_public_id(row["id"])),
        orjson.dumps(row["custom_id"]),
        response,
        orjson.dumps(error),
    )
    return status == "completed", line


@dataclass
class _Output:
    """One output file being written: lines are buffered and flushed from a thread."""

    writer: BlobWriter
    key: str
    lines: int = 0
    buffer: bytearray | None = None

    async def add(self, line: bytes) -> None:
        if self.buffer is None:
            self.buffer = bytearray()
        self.buffer += line
        self.lines += 1
        if len(self.buffer) >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            await asyncio.to_thread(self.writer.write, data)


@dataclass
class _Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    deduplicated: int = 0
    dedup_tokens_saved: int = 0


async def _write_files(
    conn: Conn, blobs: BlobStore, batch: BatchRecord
) -> tuple[_Output, _Output, _Totals]:
    out_key, err_key = new_blob_key("output"), new_blob_key("output")
    async with writing(blobs, out_key) as out_writer, writing(blobs, err_key) as err_writer:
        out, err = _Output(out_writer, out_key), _Output(err_writer, err_key)
        totals = _Totals()
        async for row in queue.iter_results(conn, batch.id):
            ok, line = result_line(row)
            await (out if ok else err).add(line)
            tokens = (row["prompt_tokens"] or 0, row["completion_tokens"] or 0)
            totals.input_tokens += tokens[0]
            totals.output_tokens += tokens[1]
            totals.cached_tokens += row["cached_tokens"] or 0
            totals.reasoning_tokens += row["reasoning_tokens"] or 0
            if ok and row["dedup_of"] is not None:
                totals.deduplicated += 1
                totals.dedup_tokens_saved += sum(tokens)
        await out.flush()
        await err.flush()
    return out, err, totals


async def _register(
    conn: Conn,
    blobs: BlobStore,
    batch: BatchRecord,
    output: _Output,
    suffix: str,
    expires_at: datetime,
) -> str | None:
    if output.lines == 0:
        await asyncio.to_thread(blobs.delete, output.key)
        return None
    record = await files.insert(
        conn,
        file_id=new_id("file-"),
        owner_id=batch.owner_id,
        project_id=batch.project_id,
        purpose="batch_output",
        filename=f"{batch.id}_{suffix}.jsonl",
        size=output.writer.size,
        sha256=output.writer.sha256,
        blob_key=output.key,
        expires_at=expires_at,
    )
    return record.id


async def finish_batch(
    pool: Pool,
    blobs: BlobStore,
    batch_id: str,
    outcome: str,
    *,
    retention: timedelta,
    now: Callable[[], datetime],
    request_retention: timedelta | None = None,
    metrics: SchedulerMetrics | None = None,
    prices: PriceTable | None = None,
) -> bool:
    """Finish one batch as ``outcome``; False if another actor changed it first. Its
    output files expire after the batch's own setting or ``retention``; its request rows
    are pruned after ``request_retention`` (None: with the output files). GPU time still
    unfolded is priced at ``prices`` (the settings' ``price_table``)."""
    if outcome == "completed":
        async with pool.connection() as conn, conn.transaction():
            await batches.mark_finalizing(conn, batch_id, now())
    async with pool.connection() as conn, conn.transaction():
        batch = await batches.lock_for_finish(conn, batch_id)
        if batch is None:
            return False
        if outcome == "completed" and await batches.has_unsettled(conn, batch_id):
            # a retry re-queued requests after the batch looked done: not finished after all
            await batches.unfinalize(conn, batch_id)
            return False
        expired = await queue.expire_unsettled(conn, batch_id) if outcome == "expired" else []
        # under the batch lock: every settled request is in the totals before the final
        # counts below replace the batch's own
        await counters.fold(conn, [batch_id], prices)
        out, err, totals = await _write_files(conn, blobs, batch)
        stamp = now()
        expiry = stamp + (
            timedelta(seconds=batch.output_expires_seconds)
            if batch.output_expires_seconds
            else retention
        )
        output_file_id = await _register(conn, blobs, batch, out, "output", expiry)
        error_file_id = await _register(conn, blobs, batch, err, "error", expiry)
        done = await batches.mark_finished(
            conn,
            batch_id,
            status=outcome,
            now=stamp,
            output_file_id=output_file_id,
            error_file_id=error_file_id,
            counts=(out.lines + err.lines, out.lines, err.lines),
            tokens=(
                totals.input_tokens,
                totals.output_tokens,
                totals.cached_tokens,
                totals.reasoning_tokens,
            ),
            deduplicated=(totals.deduplicated, totals.dedup_tokens_saved),
        )
        if done:
            rows_expire = stamp + request_retention if request_retention is not None else expiry
            await retention_rows.schedule(conn, batch_id, rows_expire)
        log.info(
            "batch %s %s: %d ok, %d errors",
            batch_id,
            outcome,
            out.lines,
            err.lines,
            extra={"batch_id": batch_id},
        )
    if done and metrics:
        metrics.tallied("expired", expired)
        metrics.batches_finished.labels(outcome).inc()
        if outcome == "expired" or (outcome == "completed" and stamp > batch.deadline_at):
            metrics.deadline_misses.inc()
    return done


async def finish_ready(
    pool: Pool,
    blobs: BlobStore,
    *,
    retention: timedelta,
    now: Callable[[], datetime],
    request_retention: timedelta | None = None,
    metrics: SchedulerMetrics | None = None,
    prices: PriceTable | None = None,
) -> int:
    """Finish every batch that is ready; returns how many were finished."""
    async with pool.connection() as conn:
        ready = await batches.ready_to_finish(conn, now())
        await conn.commit()
    finished = 0
    for batch_id, outcome in ready:
        if await finish_batch(
            pool,
            blobs,
            batch_id,
            outcome,
            retention=retention,
            now=now,
            request_retention=request_retention,
            metrics=metrics,
            prices=prices,
        ):
            finished += 1
    return finished
