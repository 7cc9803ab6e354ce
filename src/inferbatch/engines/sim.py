"""engine-sim: a simulated OpenAI-compatible inference engine for tests and benchmarks.

The app answers ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` for any
model name with deterministic, clearly fake output (``"[simulated] ..."``). Each accepted request
holds one of ``max_concurrency`` slots (FIFO queue) for a service time derived from its token
counts, so throughput and queueing behave like a real engine. Faults (HTTP 500, hang + 504,
dropped connection, 429) are injected per request from a ``random.Random`` owned by the app.

Wire behaviour of a dropped connection (``drop_rate``): the app sends a ``200`` status line and
headers announcing a JSON body, then raises :class:`SimulatedConnectionDrop` before any body
byte. Under uvicorn the socket is closed, so an httpx client raises
``httpx.RemoteProtocolError`` ("peer closed connection without sending complete message body")
and never gets a response object; the openai SDK raises ``openai.APIConnectionError`` after its
retries. In-process (``httpx.ASGITransport``) the exception itself propagates, and since it
subclasses ``httpx.RemoteProtocolError`` callers see the same exception type.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import random
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
FAULT_KINDS = ("error", "timeout", "drop", "rate_limit")
_WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu", "batch", "token", "model", "engine",
)  # fmt: skip
_REQUEST_ID_KEY = "inferbatch.request_id"


@dataclass(frozen=True)
class SimConfig:
    """Behaviour of the simulated engine. Call :meth:`validate` (``create_app`` does)."""

    max_concurrency: int = 64
    """Sequences served at once; further requests wait in a FIFO queue."""
    prefill_tokens_per_s: float = 20000.0
    """Prompt processing speed of one sequence."""
    decode_tokens_per_s: float = 2000.0
    """Completion generation speed of one sequence."""
    base_latency_s: float = 0.0
    """Fixed service time added to every accepted request."""
    default_max_tokens: int = 16
    """Completion tokens when the request sets no max_tokens/max_completion_tokens."""
    error_rate: float = 0.0
    """Fraction of valid requests answered with HTTP 500 (OpenAI error envelope)."""
    timeout_rate: float = 0.0
    """Fraction of valid requests that hang for ``hang_s`` and then get HTTP 504."""
    drop_rate: float = 0.0
    """Fraction of valid requests whose connection is closed mid-response (see module doc)."""
    rate_limit_rate: float = 0.0
    """Fraction of valid requests answered with HTTP 429 and ``Retry-After: 1``."""
    hang_s: float = 30.0
    """How long a ``timeout`` fault hangs before answering."""
    seed: int | None = None
    """Seed of the app's fault-injection RNG; None draws from OS entropy."""
    embedding_dim: int = 16
    """Length of embedding vectors unless the request sets ``dimensions``."""

    def validate(self) -> None:
        """Raise ValueError if any field is out of range."""
        rates = (self.error_rate, self.timeout_rate, self.drop_rate, self.rate_limit_rate)
        if any(not 0.0 <= rate <= 1.0 for rate in rates):
            raise ValueError("fault rates must each be within [0, 1]")
        if sum(rates) > 1.0 + 1e-9:
            raise ValueError("fault rates must sum to at most 1")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if not (self.prefill_tokens_per_s > 0 and self.decode_tokens_per_s > 0):
            raise ValueError("prefill_tokens_per_s and decode_tokens_per_s must be > 0")
        if self.base_latency_s < 0 or self.hang_s < 0:
            raise ValueError("base_latency_s and hang_s must be >= 0")
        if self.default_max_tokens < 1 or self.embedding_dim < 1:
            raise ValueError("default_max_tokens and embedding_dim must be >= 1")

    def service_time_s(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Seconds one request holds a concurrency slot."""
        return (
            self.base_latency_s
            + prompt_tokens / self.prefill_tokens_per_s
            + completion_tokens / self.decode_tokens_per_s
        )


class SimulatedConnectionDrop(httpx.RemoteProtocolError):
    """Raised by the app, after the response headers, to make the server drop the connection."""


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


@dataclass
class _Job:
    """A validated inference request: its token counts and the 200 body to answer with."""

    prompt_tokens: int
    completion_tokens: int
    body: dict[str, Any]


@dataclass
class _Stats:
    requests: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    invalid: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0
    queued: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def reset(self) -> None:
        """Zero the counters; the in_flight/queued gauges keep their current values."""
        self.requests = dict.fromkeys((CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH), 0)
        self.faults = dict.fromkeys(FAULT_KINDS, 0)
        self.completed = self.invalid = self.prompt_tokens = self.completion_tokens = 0
        self.peak_in_flight = self.in_flight

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "completed": self.completed,
            "invalid": self.invalid,
            "faults": dict(self.faults),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "queued": self.queued,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def _error(status: int, message: str, type_: str, param: str | None, code: str | None) -> Response:
    envelope = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(envelope, status_code=status)


def _words(seed: bytes, count: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(count))


def _count_words(text: str) -> int:
    return len(text.split())


def _max_tokens(body: dict[str, Any], keys: tuple[str, ...], default: int) -> tuple[int, str]:
    """Completion length and finish_reason: an explicit limit is always hit ("length")."""
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _BadRequest(f"'{key}' must be a positive integer", key)
        return value, "length"
    return default, "stop"


def _inputs(value: Any, param: str) -> list[str | list[int]]:
    """Normalise a prompt/input: a string, list of strings, token array or list of arrays."""

    def is_tokens(item: Any) -> bool:
        return isinstance(item, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in item
        )

    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if is_tokens(value):
            return [value]
        if all(isinstance(item, str) or (is_tokens(item) and item) for item in value):
            return list(value)
    raise _BadRequest(f"'{param}' must be a string, a list of strings or token arrays", param)


def _input_tokens(item: str | list[int]) -> int:
    return max(1, _count_words(item) if isinstance(item, str) else len(item))


def _digest(value: Any) -> bytes:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()


def _parse_chat(body: dict[str, Any], config: SimConfig) -> _Job:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list", "messages")
    prompt_tokens = 0
    for message in messages:
        if not isinstance(message, dict):
            raise _BadRequest("each message must be an object", "messages")
        content = message.get("content")
        if isinstance(content, str):
            prompt_tokens += _count_words(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    prompt_tokens += _count_words(part["text"])
        prompt_tokens += 3
    limit_keys = ("max_completion_tokens", "max_tokens")
    n, finish = _max_tokens(body, limit_keys, config.default_max_tokens)
    text = "[simulated] " + _words(_digest(body), n)
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish,
        "logprobs": None,
    }
    return _Job(max(1, prompt_tokens), n, {"object": "chat.completion", "choices": [choice]})


def _parse_completion(body: dict[str, Any], config: SimConfig) -> _Job:
    if "prompt" not in body:
        raise _BadRequest("'prompt' is required", "prompt")
    prompts = _inputs(body["prompt"], "prompt")
    n, finish = _max_tokens(body, ("max_tokens",), config.default_max_tokens)
    seed = _digest(body)
    choices = [
        {
            "index": i,
            "text": "[simulated] " + _words(seed + i.to_bytes(4, "big"), n),
            "finish_reason": finish,
            "logprobs": None,
        }
        for i in range(len(prompts))
    ]
    prompt_tokens = sum(_input_tokens(p) for p in prompts)
    return _Job(prompt_tokens, n * len(prompts), {"object": "text_completion", "choices": choices})


def _parse_embeddings(body: dict[str, Any], config: SimConfig) -> _Job:
    if "input" not in body:
        raise _BadRequest("'input' is required", "input")
    inputs = _inputs(body["input"], "input")
    dim = body.get("dimensions", config.embedding_dim)
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 65536:
        raise _BadRequest("'dimensions' must be an integer in [1, 65536]", "dimensions")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    data = []
    for i, item in enumerate(inputs):
        rng = random.Random(_digest(item))
        vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        unit = [x / norm for x in vector]
        packed = base64.b64encode(struct.pack(f"<{dim}f", *unit)).decode()
        embedding = unit if encoding == "float" else packed
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = sum(_input_tokens(item) for item in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _Job(tokens, 0, {"object": "list", "data": data, "usage": usage})


_Parser = Callable[[dict[str, Any], SimConfig], _Job]
_PARSERS: tuple[tuple[str, _Parser], ...] = (
    (CHAT_PATH, _parse_chat),
    (COMPLETIONS_PATH, _parse_completion),
    (EMBEDDINGS_PATH, _parse_embeddings),
)


class _DroppedResponse(Response):
    """Sends a 200 status line and headers, then raises so the server closes the socket."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"1024")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        raise SimulatedConnectionDrop("engine-sim dropped the connection (drop_rate)")


class _RequestIdMiddleware:
    """Adds a fresh ``x-request-id`` header to every HTTP response, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope[_REQUEST_ID_KEY] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


class _Simulator:
    """State of one app: config, fault RNG, FIFO concurrency gate and counters."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.slots = asyncio.Semaphore(config.max_concurrency)  # FIFO wake-up order
        self.stats = _Stats()
        self.stats.reset()

    def endpoint(self, path: str, parse: _Parser) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await self.infer(path, parse, request)

        return handle

    async def infer(self, path: str, parse: _Parser, request: Request) -> Response:
        """Validate (400), maybe inject a fault, else queue for a slot, serve and answer 200."""
        self.stats.requests[path] += 1
        try:
            try:
                body = json.loads(await request.body())
            except ValueError as exc:
                raise _BadRequest(f"request body is not valid JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise _BadRequest("request body must be a JSON object")
            if not isinstance(body.get("model"), str) or not body["model"]:
                raise _BadRequest("'model' is required", "model")
            if body.get("stream"):
                raise _BadRequest("engine-sim does not support streaming", "stream")
            job = parse(body, self.config)
        except _BadRequest as exc:
            self.stats.invalid += 1
            return _error(400, exc.message, "invalid_request_error", exc.param, None)
        fault = self.draw_fault()
        if fault is not None:
            self.stats.faults[fault] += 1
            return await self.fault_response(fault)
        service_s = self.config.service_time_s(job.prompt_tokens, job.completion_tokens)
        async with self.slot():
            await asyncio.sleep(service_s)
        self.stats.completed += 1
        self.stats.prompt_tokens += job.prompt_tokens
        self.stats.completion_tokens += job.completion_tokens
        header: dict[str, Any] = {"model": body["model"]}
        prefix = {"chat.completion": "chatcmpl-sim-", "text_completion": "cmpl-sim-"}
        if job.body["object"] in prefix:
            header["id"] = prefix[job.body["object"]] + request.scope[_REQUEST_ID_KEY]
            header["created"] = int(time.time())
            total = job.prompt_tokens + job.completion_tokens
            job.body["usage"] = {
                "prompt_tokens": job.prompt_tokens,
                "completion_tokens": job.completion_tokens,
                "total_tokens": total,
            }
        return JSONResponse({**header, **job.body})

    def draw_fault(self) -> str | None:
        """One RNG draw per valid request, mapped onto the cumulative fault rates."""
        draw, cfg = self.rng.random(), self.config
        threshold = 0.0
        rates = (cfg.error_rate, cfg.timeout_rate, cfg.drop_rate, cfg.rate_limit_rate)
        for kind, rate in zip(FAULT_KINDS, rates, strict=True):
            threshold += rate
            if draw < threshold:
                return kind
        return None

    async def fault_response(self, kind: str) -> Response:
        """Faults are answered without taking a concurrency slot."""
        if kind == "error":
            return _error(500, "simulated internal error", "server_error", None, "simulated_error")
        if kind == "timeout":
            await asyncio.sleep(self.config.hang_s)
            msg = "simulated upstream timeout"
            return _error(504, msg, "server_error", None, "simulated_timeout")
        if kind == "drop":
            return _DroppedResponse()
        response = _error(429, "simulated rate limit", "requests", None, "rate_limit_exceeded")
        response.headers["Retry-After"] = "1"
        return response

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of ``max_concurrency`` slots, waiting in FIFO order if none is free."""
        self.stats.queued += 1
        try:
            await self.slots.acquire()
        finally:
            self.stats.queued -= 1
        self.stats.in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        try:
            yield
        finally:
            self.stats.in_flight -= 1
            self.slots.release()

    async def models(self, request: Request) -> Response:
        model = {"id": "sim", "object": "model", "created": 0, "owned_by": "inferbatch-sim"}
        return JSONResponse({"object": "list", "data": [model]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def get_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats.snapshot())

    async def reset_stats(self, request: Request) -> Response:
        self.stats.reset()
        return JSONResponse(self.stats.snapshot())


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error(status, str(detail), "invalid_request_error", None, None)


def create_app(config: SimConfig) -> Starlette:
    """Build a fresh engine-sim ASGI app; all state (RNG, queue, counters) lives in the app."""
    config.validate()
    sim = _Simulator(config)
    routes = [Route(path, sim.endpoint(path, parse), methods=["POST"]) for path, parse in _PARSERS]
    routes += [
        Route("/v1/models", sim.models, methods=["GET"]),
        Route("/health", sim.health, methods=["GET"]),
        Route("/sim/stats", sim.get_stats, methods=["GET"]),
        Route("/sim/reset", sim.reset_stats, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_RequestIdMiddleware)],
        exception_handlers={404: _http_error, 405: _http_error},
    )


class _HideDropTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SimulatedConnectionDrop))


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Serve ``create_app(config)`` with uvicorn until the server is shut down (e.g. SIGINT)."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host=host, port=port, log_level="warning")
    )
    logger, quiet = logging.getLogger("uvicorn.error"), _HideDropTracebacks()
    logger.addFilter(quiet)  # injected drops are expected; don't log a traceback for each
    try:
        await server.serve()
    finally:
        logger.removeFilter(quiet)


def run(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Blocking entry point: ``asyncio.run(serve(config, host, port))``."""
    asyncio.run(serve(config, host, port))
