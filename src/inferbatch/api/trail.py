"""The audit trail as a plain ASGI middleware: one audit row per changing request.

For a request whose method is not GET, HEAD or OPTIONS that matched a route, the row is
written after the handler, in its own short transaction, before the last part of the
answer goes out (so a client that reads the log after its change finds it). Nothing is
done for reads. The row names the route's event type, the object (a path parameter, else
the ``id`` of a JSON answer), the actor the request's authentication left on
``request.state`` (``services.audit.note_actor``), the client's address as the server
reports it, the user agent and the status; of a JSON answer only ``id`` and
``error.code`` are read, of the request nothing but its route, address and user agent.

A change whose row cannot be written stands (it is committed already): the failure is
logged as an error, and the answer goes out as it is.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferbatch.api.deps import READ_METHODS, AppState
from inferbatch.db import audit as audit_rows
from inferbatch.services import audit

log = logging.getLogger(__name__)

MAX_ANSWER_READ = 64 * 1024
"""A JSON answer longer than this is not parsed for its id."""


def _template(scope: Scope) -> str | None:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


def _answer_fields(body: bytes) -> tuple[str | None, str | None]:
    """The ``id`` and the ``error.code`` (else ``error.type``) of a JSON answer."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    object_id = doc.get("id") if isinstance(doc.get("id"), str) else None
    error = doc.get("error")
    code = None
    if isinstance(error, dict):
        value = error.get("code") or error.get("type")
        code = value if isinstance(value, str) else None
    return object_id, code


class AuditTrail:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope["method"] in READ_METHODS
            and (scope["method"], scope.get("path")) not in audit.EVENT_TYPES
        ):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status = 500
        is_json = False
        body = bytearray()
        recorded = False

        async def record() -> None:
            nonlocal recorded
            recorded = True
            template = _template(scope)
            if template is None:  # no route matched: nothing could change
                return
            object_id, error_code = (
                _answer_fields(bytes(body))
                if is_json and len(body) <= MAX_ANSWER_READ
                else (None, None)
            )
            exchange = audit.Exchange(
                method=scope["method"],
                template=template,
                path_params={k: str(v) for k, v in scope.get("path_params", {}).items()},
                status=status,
                response_id=object_id,
                error_code=error_code,
                client=scope["client"][0] if scope.get("client") else None,
                user_agent=_header(scope, b"user-agent"),
            )
            await self._write(scope, audit.request_event(exchange, state.get(audit.ACTOR_STATE)))

        async def send_and_record(message: Message) -> None:
            nonlocal status, is_json
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                is_json = content_type.startswith(b"application/json")
            elif message["type"] == "http.response.body":
                if is_json and len(body) <= MAX_ANSWER_READ:
                    body.extend(message.get("body", b""))
                if not message.get("more_body", False) and not recorded:
                    await record()
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except Exception:
            if not recorded:
                status = 500
                await record()
            raise

    async def _write(self, scope: Scope, event: audit_rows.Event) -> None:
        try:
            st: AppState = scope["app"].state.inferbatch
            async with st.db.unscoped() as conn:  # the system's record, refusals too
                await audit_rows.append(conn, event)
        except Exception:
            log.exception(
                "the audit row of %s %s (%s) was not written",
                scope["method"],
                event.data.get("route"),
                event.type,
            )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None
