"""Validation of batch input lines (pure: no I/O).

Each line of a batch input file must be a JSON object with a string ``custom_id``,
``method`` ``POST``, ``url`` equal to the batch endpoint and an object ``body`` naming a
``model`` and not asking for a stream. Duplicate custom_ids are found by the ingest step,
which sees all lines.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from inferbatch.domain import MESSAGES_ENDPOINT
from inferbatch.scheduler.prefix import prefix_key


@dataclass(frozen=True, slots=True)
class LineError:
    """One entry of a failed batch's ``errors.data`` (``line`` is 1-based)."""

    code: str
    message: str
    line: int | None
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True, slots=True)
class ParsedLine:
    line: int
    custom_id: str
    model: str
    body_json: str
    """The body as it arrived, compacted: its keys in their order, no whitespace (what is
    stored and sent to the engine; the hash is of the canonical form)."""
    input_hash: bytes
    prefix_key: int = 0
    """See :mod:`inferbatch.scheduler.prefix`."""


def canonical_json(value: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8: the form hashed for deduplication."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def input_hash(url: str, body_canonical: bytes) -> bytes:
    """SHA-256 of the canonical JSON of ``{"url": url, "body": body}``.

    Sorted keys put ``body`` before ``url``, so the document is assembled from the body's
    canonical bytes without serialising it twice.
    """
    digest = hashlib.sha256(b'{"body":')
    digest.update(body_canonical)
    digest.update(b',"url":')
    digest.update(orjson.dumps(url))
    digest.update(b"}")
    return digest.digest()


def parse_line(raw: bytes, line: int, endpoint: str) -> ParsedLine | LineError:
    """Validate one non-blank input line against the batch's endpoint."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return LineError("invalid_utf8", "Line is not valid UTF-8.", line)
        return LineError("invalid_json_line", f"Line is not valid JSON: {exc}.", line)
    if not isinstance(obj, dict):
        return LineError("invalid_json_line", "Line must be a JSON object.", line)
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        what = "missing" if custom_id is None else "not a non-empty string"
        return LineError("invalid_custom_id", f"custom_id is {what}.", line, param="custom_id")
    if "\x00" in custom_id:  # PostgreSQL text cannot hold it
        return LineError(
            "invalid_custom_id", "custom_id contains a NUL character.", line, param="custom_id"
        )
    method = obj.get("method")
    if method != "POST":
        return LineError(
            "invalid_method", f"method must be POST, got {method!r}.", line, param="method"
        )
    url = obj.get("url")
    if url != endpoint:
        return LineError(
            "invalid_url",
            f"url {url!r} does not match the batch endpoint {endpoint!r}.",
            line,
            param="url",
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        return LineError("invalid_body", "body must be a JSON object.", line, param="body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return LineError(
            "missing_model", "body.model is missing or not a string.", line, param="body.model"
        )
    if "\x00" in model:
        return LineError(
            "invalid_model", "body.model contains a NUL character.", line, param="body.model"
        )
    stream = body.get("stream")
    if stream is not None and stream is not False:
        # a batch stores one JSON answer per line; an event stream has no place in it
        return LineError(
            "invalid_stream",
            "body.stream is not supported in a batch; leave it out or set it to false.",
            line,
            param="body.stream",
        )
    if endpoint == "/v1/responses" and not isinstance(body.get("input"), (str, list)):
        return LineError(
            "invalid_body",
            "body.input must be a string or a list of input items.",
            line,
            param="body.input",
        )
    if endpoint == MESSAGES_ENDPOINT:
        # checked on create already (the Message Batches API has no failed state)
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return LineError(
                "invalid_body",
                "body.max_tokens must be an integer of at least 1.",
                line,
                param="body.max_tokens",
            )
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return LineError(
                "invalid_body",
                "body.messages must be a non-empty list.",
                line,
                param="body.messages",
            )
    canonical = canonical_json(body)
    return ParsedLine(
        line=line,
        custom_id=custom_id,
        model=model,
        body_json=orjson.dumps(body).decode(),
        input_hash=input_hash(endpoint, canonical),
        prefix_key=prefix_key(model, body),
    )


MAX_LISTED_ERRORS = 100
"""Line errors listed (a failed batch's ``errors.data``); the rest are counted."""


def too_many(max_requests: int, line: int) -> LineError:
    return LineError("too_many_requests", f"The file has more than {max_requests} requests.", line)


@dataclass
class FileCheck:
    """What :func:`check_file` found: the first ``limit`` errors of all ``error_count``."""

    lines: int = 0
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)


def check_file(reader: BinaryIO, max_requests: int, limit: int = MAX_LISTED_ERRORS) -> FileCheck:
    """Validate every line of a batch input file before any batch is made (an upload's
    ``?validate=true``): each line as ingest would, the endpoint being the first line's
    ``url``, custom_ids unique, at most ``max_requests`` requests. Reads line by line;
    what it keeps grows with the lines only by a 16-byte digest per custom_id."""
    check = FileCheck()
    endpoint: str | None = None
    seen: dict[bytes, int] = {}

    def error(err: LineError) -> None:
        check.error_count += 1
        if len(check.errors) < limit:
            check.errors.append(err)

    line = 0
    for raw in iter(reader.readline, b""):
        line += 1
        if not raw.strip():
            continue
        check.lines += 1
        if check.lines > max_requests:
            error(too_many(max_requests, line))
            break
        if endpoint is None:
            try:
                first = orjson.loads(raw)
                endpoint = first.get("url") if isinstance(first, dict) else None
            except orjson.JSONDecodeError:
                pass
        parsed = parse_line(raw, line, endpoint or "")
        if isinstance(parsed, LineError):
            error(parsed)
            continue
        key = hashlib.blake2b(parsed.custom_id.encode(), digest_size=16).digest()
        if key in seen:
            message = f"Duplicate custom_id {parsed.custom_id!r} (first on line {seen[key]})."
            error(LineError("duplicate_custom_id", message, line, param="custom_id"))
        else:
            seen[key] = line
    if check.lines == 0:
        error(LineError("empty_file", "The input file is empty.", None))
    return check
