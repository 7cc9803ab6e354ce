"""A Message Batch's results: its output and error files, read as Anthropic's result lines.

A finished batch writes OpenAI's output lines (scheduler/finalize.py): the output file
holds the requests that succeeded, the error file those that failed, were cancelled
(``batch_cancelled``) or expired (``batch_expired``). Each line becomes one
:class:`~inferbatch.protocol.anthropic.MessageBatchIndividualResponse`, read chunk by
chunk in a thread and converted line by line, so memory holds a chunk, never a file.

The lines are built as plain objects and dumped with orjson (the models in
``protocol.anthropic`` describe them; the tests check every kind against them): the
stored Message is passed on as it was answered, not validated again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, BinaryIO

import orjson

from inferbatch.blobstore import BlobStore
from inferbatch.protocol.anthropic import error_type_for

CHUNK_BYTES = 1 << 18

ERROR_CODE_TYPES = {"model_not_found": "not_found_error", "engine_unavailable": "overloaded_error"}
"""The Anthropic error type of a request that failed without an engine answer, by our
error code (anything else is an ``api_error``)."""


def _errored(kind: str, message: str) -> dict[str, Any]:
    return {
        "type": "errored",
        "error": {"type": "error", "error": {"type": kind, "message": message}},
    }


def _engine_error(status: int, body: Any) -> dict[str, Any]:
    """The errored result of an engine's non-2xx answer: its own Anthropic error when it
    gave one (an engine serving the Messages API, or a refused translation), else the
    message of its OpenAI error with the type of its status."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        message = error.get("message")
        text = message if isinstance(message, str) and message else f"HTTP {status}"
        if body.get("type") == "error" and isinstance(error.get("type"), str):
            return _errored(error["type"], text)
        return _errored(error_type_for(status), text)
    return _errored(error_type_for(status), f"The engine answered HTTP {status}.")


def result_line(line: bytes) -> bytes:
    """One line of a batch's output or error file as its result line."""
    row = orjson.loads(line)
    error = row.get("error") or {}
    response = row.get("response")
    result: dict[str, Any]
    if error.get("code") == "batch_cancelled":
        result = {"type": "canceled"}
    elif error.get("code") == "batch_expired":
        result = {"type": "expired"}
    elif isinstance(response, dict) and 200 <= response.get("status_code", 0) < 300:
        result = {"type": "succeeded", "message": response.get("body")}
    elif isinstance(response, dict):
        result = _engine_error(int(response.get("status_code", 500)), response.get("body"))
    else:
        kind = ERROR_CODE_TYPES.get(str(error.get("code")), "api_error")
        result = _errored(kind, str(error.get("message") or "The request failed."))
    return orjson.dumps({"custom_id": row.get("custom_id"), "result": result}) + b"\n"


def unprocessed_line(message: str) -> Callable[[bytes], bytes]:
    """The result line of each input line of a batch whose input was refused as a whole
    (the API checks every request first, so this is a safety net): errored, saying why."""

    def convert(line: bytes) -> bytes:
        custom_id = orjson.loads(line).get("custom_id")
        result = _errored("invalid_request_error", message)
        return orjson.dumps({"custom_id": custom_id, "result": result}) + b"\n"

    return convert


async def open_readers(blobs: BlobStore, keys: Sequence[str]) -> list[BinaryIO]:
    """Open every blob now (``FileNotFoundError`` and ``StorageUnavailable`` are raised
    here, before a response starts); what was opened is closed on error."""
    readers: list[BinaryIO] = []
    try:
        for key in keys:
            readers.append(await asyncio.to_thread(blobs.open_reader, key))
    except BaseException:
        for reader in readers:
            await asyncio.to_thread(reader.close)
        raise
    return readers


async def stream_lines(
    readers: Sequence[BinaryIO], convert: Callable[[bytes], bytes]
) -> AsyncIterator[bytes]:
    """The converted lines of each reader in turn, a chunk's worth at a time; closes every
    reader when done or abandoned."""
    try:
        for reader in readers:
            pending = bytearray()
            while chunk := await asyncio.to_thread(reader.read, CHUNK_BYTES):
                pending += chunk
                end = pending.rfind(b"\n")
                if end < 0:
                    continue  # one line longer than a chunk: read on
                lines = bytes(pending[:end]).split(b"\n")
                del pending[: end + 1]
                out = b"".join(convert(line) for line in lines if line.strip())
                if out:
                    yield out
            if pending.strip():
                yield convert(bytes(pending))
    finally:
        for reader in readers:
            await asyncio.to_thread(reader.close)
