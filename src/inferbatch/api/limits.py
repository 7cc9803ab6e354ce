"""Size limits on requests: a body over its limit is a 413 and headers over theirs a 431,
in OpenAI's error envelope, never a 500.

:class:`RequestLimits` (ASGI middleware) refuses a body of a non-file route past
``max_json_body_bytes``: at once from its ``content-length``, else as soon as the bytes
streamed in pass the limit (nothing buffers it whole first). Multipart bodies (files,
upload parts) and Message Batch creates are left to their routes' own, larger limits,
which are enforced while reading too. Headers past ``max_header_bytes`` are refused
before the app sees them.

A server refuses headers too large to parse at all (``h11``'s receive buffer); uvicorn
answers those 400, :class:`H11Protocol` answers 431 as the status says.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornH11Protocol

from inferbatch.errors import BodyTooLarge, HeadersTooLarge, InferbatchError

HEADER_SLACK = 8 * 1024
"""Bytes the server reads past ``max_header_bytes`` (the request line, a little over), so
headers just over the limit reach :class:`RequestLimits` and get its message."""

H11_DEFAULT_BUFFER = 16 * 1024
"""h11's own receive buffer limit, uvicorn's default."""

OWN_LIMIT_PATHS = frozenset({"/v1/messages/batches"})
"""Routes that read their (JSON) body with a limit of their own."""


def _too_large(limit: int) -> str:
    return f"The request body is larger than the limit of {limit} bytes."


class BodyOverLimit(HTTPException):
    """Raised from ``receive`` once a streamed body passes its limit; FastAPI passes an
    HTTPException from body reading on to the app's handler (a 413 in the envelope)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _limited(scope: Scope) -> bool:
    """Whether the body of this request is bound by ``max_json_body_bytes``."""
    if scope["method"] == "POST" and scope["path"] in OWN_LIMIT_PATHS:
        return False
    content_type = (_header(scope, b"content-type") or b"").lower()
    return not content_type.startswith(b"multipart/form-data")


async def _answer(exc: InferbatchError, send: Send) -> None:
    body = json.dumps(exc.envelope()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_header_bytes:
            limit = self.max_header_bytes
            await _answer(
                HeadersTooLarge(f"The request headers are larger than the limit of {limit} bytes."),
                send,
            )
            return
        if not _limited(scope):
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _answer(BodyTooLarge(_too_large(limit)), send)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyOverLimit(limit)
            return message

        await self.app(scope, receive_limited, send)


class _Connection(h11.Connection):
    """An h11 connection that remembers the status its last protocol error suggests."""

    error_status = 400

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error_status = exc.error_status_hint
            raise


class H11Protocol(_UvicornH11Protocol):
    """uvicorn's h11 protocol, answering headers too large to parse with 431 (in the
    error envelope) instead of a plain 400."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size
        self.conn = _Connection(h11.SERVER, size or H11_DEFAULT_BUFFER)

    def send_400_response(self, msg: str) -> None:
        assert isinstance(self.conn, _Connection)
        if self.conn.error_status != 431:
            super().send_400_response(msg)
            return
        body = json.dumps(HeadersTooLarge().envelope()).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        for event in (
            h11.Response(
                status_code=431, headers=headers, reason=b"Request Header Fields Too Large"
            ),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()
