"""HTTP request metrics as a plain ASGI middleware (streaming bodies pass untouched)."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferbatch.metrics import ApiMetrics


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/batches/{batch_id}``), never the raw path:
    ids must not become label values."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.duration.labels(
                route_template(scope), scope.get("method", ""), str(status)
            ).observe(time.perf_counter() - started)
