"""A real HTTP server that receives webhook deliveries, for tests: aiohttp on 127.0.0.1 in
a thread of its own, recording every request and answering from a script."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from inferbatch.engines.local import free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: str


class Receiver:
    """Answers each request with the next status of ``script`` (then ``default``); a 3xx
    answer redirects to ``/redirected``."""

    def __init__(self, script: list[int] | None = None, default: int = 200) -> None:
        self.script = list(script or [])
        self.default = default
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="webhook-receiver", daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        with self._lock:
            self.received.append(
                Received(request.path, {k.lower(): v for k, v in request.headers.items()}, body)
            )
            status = self.script.pop(0) if self.script else self.default
        if 300 <= status < 400:
            return web.Response(status=status, headers={"location": self.url + "/redirected"})
        return web.Response(status=status, text="ok" if status < 300 else "receiver says no")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> Receiver:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("receiver did not start")
        return self

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if path is None or r.path == path]

    def wait_for(self, n: int, path: str | None = None, timeout: float = 60.0) -> list[Received]:
        """The first ``n`` requests (to ``path``), once they arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.requests(path)
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.requests(path))} of {n} deliveries arrived at {path}")


@contextmanager
def receiving(script: list[int] | None = None, default: int = 200) -> Iterator[Receiver]:
    receiver = Receiver(script, default).start()
    try:
        yield receiver
    finally:
        receiver.close()
