"""One client for every engine: OpenAI-compatible HTTP.

An engine is named by its OpenAI base URL (``http://gpu-1:8000/v1``). A request's batch
URL (``/v1/chat/completions``) is sent to the base URL plus the path after ``/v1``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import orjson

from inferbatch.engines import messages as messages_chat
from inferbatch.engines import responses as responses_chat
from inferbatch.engines.responses import Untranslatable

RESPONSES_MODES = ("auto", "native", "chat")
"""How an engine is sent ``/v1/responses`` (or ``/v1/messages``) requests: as they are
(``native``), translated to chat completions (``chat``), or as its first answer to a probe
says (``auto``)."""


@dataclass(frozen=True, slots=True)
class Translation:
    """How the requests of an API an engine may not serve become chat completions, and
    their answers come back (pure functions; see engines/responses.py, engines/messages.py).
    ``refusal`` is the 400 body of a request that cannot be translated."""

    to_chat: Callable[[dict[str, Any]], dict[str, Any]]
    from_chat: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
    refusal: Callable[[Untranslatable], dict[str, Any]]


def _openai_refusal(exc: Untranslatable) -> dict[str, Any]:
    error = {"message": str(exc), "type": "invalid_request_error", "param": exc.param}
    return {"error": {**error, "code": None}}


TRANSLATIONS = {
    "/responses": Translation(responses_chat.to_chat, responses_chat.from_chat, _openai_refusal),
    "/messages": Translation(messages_chat.to_chat, messages_chat.from_chat, messages_chat.refusal),
}
"""Engine paths sent as they are to an engine that serves them, else translated."""


@dataclass(frozen=True, slots=True)
class EngineResponse:
    status: int
    body: Any
    request_id: str | None
    retry_after: float | None
    seconds: float
    text: str | None = None
    """The body as it arrived, when it is JSON on one line (stored as is)."""
    malformed: bool = False
    """The body is empty or not JSON (an event stream, an HTML page from a proxy): never a
    completed request, whatever the status."""


UNAVAILABLE = "engine_unavailable"
"""The code of a transport error where the request never reached the engine."""
TIMEOUT = "request_timeout"
"""The code of a call that took longer than the engine timeout (OpenAI's code)."""
CONNECTION_LOST = "engine_connection_lost"
"""The code of a call whose connection closed before the answer was complete."""


class EngineTransportError(Exception):
    """No HTTP response: connection refused or dropped, or the request timed out."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Engine(Protocol):
    """What a worker needs from an engine; tests and benchmarks pass other ones."""

    name: str
    max_in_flight: int

    async def call(self, url: str, body: bytes) -> EngineResponse:
        """POST the JSON ``body`` to the engine's path for ``url``."""
        ...

    async def models(self) -> list[str]: ...

    async def aclose(self) -> None: ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def engine_path(url: str) -> str:
    """``/v1/chat/completions`` -> ``/chat/completions`` (relative to the base URL)."""
    return url[3:] if url.startswith("/v1/") else url


class HttpEngine:
    """An OpenAI-compatible engine over HTTP (aiohttp: its connection pool stays cheap
    with hundreds of requests in flight)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_in_flight: int,
        timeout: float,
        api_key: str | None = None,
        responses: str = "auto",
        messages: str = "auto",
    ) -> None:
        for name, mode in (("responses", responses), ("messages", messages)):
            if mode not in RESPONSES_MODES:
                raise ValueError(f"{name} must be one of {', '.join(RESPONSES_MODES)}")
        self.name = base_url.rstrip("/")
        self.max_in_flight = max_in_flight
        known = {"native": True, "chat": False}
        self._native: dict[str, bool | None] = {
            "/responses": known.get(responses),
            "/messages": known.get(messages),
        }
        """Whether the engine serves each path of :data:`TRANSLATIONS` (None: ask it)."""
        self._probe_lock = asyncio.Lock()
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=10.0)
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # created on first use: a session belongs to the running event loop
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self.max_in_flight, keepalive_timeout=60),
            )
        return self._session

    async def call(self, url: str, body: bytes) -> EngineResponse:
        path = engine_path(url)
        if path in TRANSLATIONS:
            native = await self._serves(path)
            if isinstance(native, EngineResponse):
                return native  # the probe's 429 or 5xx: this attempt is retried
            if not native:
                return await self._call_as_chat(TRANSLATIONS[path], body)
        return await self._post(path, body)

    async def _serves(self, path: str) -> bool | EngineResponse:
        """Whether the engine serves ``path`` (``/responses``, ``/messages``): asked with
        an empty body, which an engine that serves it refuses as invalid (400/422) and one
        that does not answers 404 or 405 for. The answer is kept. A 429 or 5xx says
        nothing: that answer is returned for the caller to give as its own, and the next
        request asks again."""
        if self._native[path] is None:
            async with self._probe_lock:
                if self._native[path] is None:
                    probe = await self._post(path, b"{}")
                    if probe.status in (404, 405):
                        self._native[path] = False
                    elif probe.status == 429 or probe.status >= 500:
                        return probe
                    else:
                        self._native[path] = True
        return bool(self._native[path])

    async def _call_as_chat(self, translation: Translation, body: bytes) -> EngineResponse:
        """A request sent as a chat completion, its answer made the API's own object."""
        request = orjson.loads(body)
        try:
            chat = translation.to_chat(request)
        except Untranslatable as exc:
            return EngineResponse(400, translation.refusal(exc), None, None, 0.0)
        resp = await self._post("/chat/completions", orjson.dumps(chat))
        if not (200 <= resp.status < 300) or resp.malformed or not isinstance(resp.body, dict):
            return resp
        answer = translation.from_chat(resp.body, request)
        return dataclasses.replace(resp, body=answer, text=orjson.dumps(answer).decode())

    async def _post(self, path: str, body: bytes) -> EngineResponse:
        started = time.perf_counter()
        try:
            async with self._client().post(self.name + path, data=body) as resp:
                content = await resp.read()
                status, headers = resp.status, resp.headers
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise EngineTransportError(
                UNAVAILABLE, f"The engine could not be reached: {exc!r}"
            ) from exc
        except TimeoutError as exc:
            raise EngineTransportError(TIMEOUT, f"The engine timed out: {exc!r}") from exc
        except aiohttp.ClientError as exc:
            raise EngineTransportError(
                CONNECTION_LOST, f"The engine dropped the connection: {exc!r}"
            ) from exc
        text: str | None = None
        malformed = False
        try:
            parsed: Any = orjson.loads(content)
            if b"\n" not in content and b"\r" not in content:
                text = content.decode()  # valid UTF-8: orjson checked it
        except orjson.JSONDecodeError:
            malformed = True
            parsed = {"error": {"message": content[:2000].decode(errors="replace")}}
        return EngineResponse(
            status=status,
            body=parsed,
            request_id=headers.get("x-request-id"),
            retry_after=parse_retry_after(headers.get("retry-after")),
            seconds=time.perf_counter() - started,
            text=text,
            malformed=malformed,
        )

    async def reachable(self) -> bool:
        """Whether the engine answers HTTP at all (any status), asked with a short timeout:
        tells a dead engine from one that dropped one connection."""
        try:
            async with self._client().get(
                self.name + "/models", timeout=aiohttp.ClientTimeout(total=3.0)
            ) as resp:
                await resp.read()
            return True
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def models(self) -> list[str]:
        """Model ids the engine lists at ``/models`` (empty when it cannot be asked)."""
        try:
            async with self._client().get(
                self.name + "/models", timeout=aiohttp.ClientTimeout(total=3.0)
            ) as resp:
                data = (await resp.json(content_type=None)).get("data", [])
            return [m["id"] for m in data if isinstance(m, dict) and "id" in m]
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
            return []

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class NoopEngine:
    """Answers every request at once with a tiny 200, in process: for benchmarks that
    measure the queue and worker path without any engine cost."""

    def __init__(self, max_in_flight: int = 256) -> None:
        self.name = "noop"
        self.max_in_flight = max_in_flight

    async def call(self, url: str, body: bytes) -> EngineResponse:
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        return EngineResponse(200, {"object": "noop", "usage": usage}, None, None, 0.0)

    async def models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        pass
