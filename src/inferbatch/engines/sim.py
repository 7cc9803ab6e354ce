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

Engine behaviour that benchmarks of dispatch and concurrency control rely on, all off by default:

- Prefix cache (``prefix_cache_tokens`` > 0), after vLLM's automatic prefix caching. The rendered
  prompt (each chat message as ``<|im_start|> role <content words> <|im_end|>``, in order, which
  is exactly the 3 + words tokens engine-sim counts; or each completion prompt) is cut into
  blocks of ``prefix_block_tokens`` tokens. A block is named by a chained hash (SHA-256 of the
  previous block's hash and this block's tokens), so a block matches only behind the same
  prefix. When a request is admitted to a slot, its leading blocks already in the cache are
  cached: their tokens cost no prefill time and are reported as
  ``usage.prompt_tokens_details.cached_tokens``. The last prompt token is always computed (as in
  vLLM), so a prompt is never wholly cached. Then all its full blocks enter the cache, an LRU
  over blocks holding at most ``prefix_cache_tokens // prefix_block_tokens`` of them; a hit
  refreshes a block. A request's blocks are refreshed last-block-first, so under pressure a
  prefix loses its tail before its head (vLLM frees blocks in the same order). Blocks enter at
  admission rather than when prefill ends: a request admitted while another with the same
  prefix is still in prefill already hits.
- Overload bound (``max_queue``): at most that many requests wait for a slot; one that would
  wait beyond it is answered 429 at once, with ``Retry-After: 1`` and the envelope of the
  injected ``rate_limit`` fault.
- Batch slowdown (``batch_slowdown`` = s): a request admitted while ``running`` sequences hold a
  slot (itself included) decodes at ``decode_tokens_per_s / (1 + s * (running - 1) /
  max_concurrency)``. The speed is fixed at admission and not re-evaluated as the batch changes
  (an approximation: a real engine's per-step speed follows the batch size step by step).
- Live changes: ``POST /sim/config`` with a JSON object of :class:`SimConfig` fields changes
  them at once (``GET`` reads them). A smaller ``max_concurrency`` lets running requests finish
  and admits waiting ones only while fewer than the new limit run. ``capacity_schedule`` (CLI
  ``--capacity-schedule "0:64,60:32"``: seconds since start, max_concurrency) is applied by a
  background task of the app's lifespan.

``GET /sim/stats`` returns counters (``requests`` per path and ``requests_total``, ``completed``,
``invalid``, ``faults``, ``rate_limited``, ``prompt_tokens``, ``completion_tokens``,
``prefix_cache_hit_tokens``, ``prefix_cache_miss_tokens``) and gauges (``running`` and
``waiting``, also under their older names ``in_flight`` and ``queued``, ``peak_in_flight``,
``max_concurrency``, ``prefix_cache_used_tokens``). ``POST /sim/reset`` zeroes the counters;
``POST /sim/reset?cache=1`` also empties the prefix cache.
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
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
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
    prefix_cache_tokens: int = 0
    """Capacity of the prefix cache in tokens (whole blocks); 0 turns the cache off.

    Cached tokens save ``1 / prefill_tokens_per_s`` seconds each: at the default 20,000 tokens/s
    a 2,000-token shared prefix saves 0.1 s, against 8 ms for 16 completion tokens at 2,000/s.
    """
    prefix_block_tokens: int = 64
    """Tokens per prefix-cache block; only full blocks are cached."""
    max_queue: int | None = None
    """Most requests that may wait for a slot; one more is answered 429. None: unbounded."""
    batch_slowdown: float = 0.0
    """Decode slowdown with batch size: speed / (1 + this * (running - 1) / max_concurrency)."""
    capacity_schedule: tuple[tuple[float, int], ...] = ()
    """(seconds since start, max_concurrency) pairs applied by the app's lifespan task."""

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
        if self.prefix_cache_tokens < 0 or self.prefix_block_tokens < 1:
            raise ValueError("prefix_cache_tokens must be >= 0 and prefix_block_tokens >= 1")
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError("max_queue must be >= 0 (or None: unbounded)")
        if not 0.0 <= self.batch_slowdown < math.inf:
            raise ValueError("batch_slowdown must be a finite number >= 0")
        for at, limit in self.capacity_schedule:
            if not 0.0 <= at < math.inf or limit < 1:
                raise ValueError("capacity_schedule needs times >= 0 and max_concurrency >= 1")

    def service_time_s(
        self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, running: int = 1
    ) -> float:
        """Seconds one request holds a concurrency slot.

        ``cached_tokens`` of the prompt cost no prefill; ``running`` is the number of sequences
        holding a slot when this one is admitted (itself included), which slows its decode by
        ``1 + batch_slowdown * (running - 1) / max_concurrency``.
        """
        slowdown = 1.0 + self.batch_slowdown * max(0, running - 1) / self.max_concurrency
        return (
            self.base_latency_s
            + max(0, prompt_tokens - cached_tokens) / self.prefill_tokens_per_s
            + completion_tokens * slowdown / self.decode_tokens_per_s
        )


def parse_capacity_schedule(text: str) -> tuple[tuple[float, int], ...]:
    """Parse ``"0:64,60:32,120:64"`` (seconds since start : max_concurrency), sorted by time.

    Raises ValueError on a malformed entry, a negative time or a limit below 1.
    """
    steps: list[tuple[float, int]] = []
    for entry in text.split(","):
        at, sep, limit = entry.strip().partition(":")
        try:
            step = (float(at), int(limit))
        except ValueError:
            step = None
        if not sep or step is None or not 0.0 <= step[0] < math.inf or step[1] < 1:
            raise ValueError(f"capacity schedule entry {entry.strip()!r} is not SECONDS:LIMIT")
        steps.append(step)
    return tuple(sorted(steps))


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
    sequences: tuple[tuple[str, ...], ...] = ()
    """Rendered prompt tokens, one tuple per sequence, for the prefix cache (none: not cached)."""


class PrefixCache:
    """LRU over prompt blocks named by chained hashes (see the module docstring).

    Holds at most ``capacity_tokens // block_tokens`` blocks. Memory is bounded by that, not
    by the number of requests served.
    """

    def __init__(self, capacity_tokens: int, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self.capacity_blocks = capacity_tokens // block_tokens
        self._blocks: OrderedDict[bytes, None] = OrderedDict()  # least recently used first

    @property
    def used_tokens(self) -> int:
        return len(self._blocks) * self.block_tokens

    def block_hashes(self, tokens: Sequence[str]) -> list[bytes]:
        """Chained hashes of the full blocks of ``tokens``, in order."""
        hashes, previous, size = [], b"", self.block_tokens
        for start in range(0, len(tokens) - size + 1, size):
            text = "\x1f".join(tokens[start : start + size]).encode()
            previous = hashlib.sha256(previous + text).digest()
            hashes.append(previous)
        return hashes

    def admit(self, tokens: Sequence[str]) -> int:
        """Cached tokens of one sequence being admitted; then its blocks enter the cache."""
        hashes = self.block_hashes(tokens)
        hittable = (len(tokens) - 1) // self.block_tokens  # the last token is always computed
        hits = 0
        while hits < min(hittable, len(hashes)) and hashes[hits] in self._blocks:
            hits += 1
        for block in reversed(hashes):  # head most recent: pressure evicts a prefix's tail first
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        self._evict()
        return hits * self.block_tokens

    def resize(self, capacity_tokens: int) -> None:
        """Change the capacity, evicting least recently used blocks beyond it."""
        self.capacity_blocks = capacity_tokens // self.block_tokens
        self._evict()

    def clear(self) -> None:
        self._blocks.clear()

    def _evict(self) -> None:
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)


class _Gate:
    """FIFO admission to ``limit`` slots; the limit may change while slots are held.

    A lower limit never interrupts holders: waiters are admitted only while fewer than the
    current limit hold a slot.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def free(self) -> bool:
        """Would an arriving request be admitted without waiting?"""
        return self.running < self.limit and not self._waiters

    async def acquire(self) -> None:
        if self.free():
            self.running += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # admitted, then cancelled before running: hand the slot on
            else:
                with contextlib.suppress(ValueError):  # already popped by _wake
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.running -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.running < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled waiter is skipped, not admitted
                waiter.set_result(None)
                self.running += 1


@dataclass
class _Stats:
    requests: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    invalid: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    peak_in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    prefix_cache_miss_tokens: int = 0

    def reset(self, running: int) -> None:
        """Zero the counters; the peak restarts from the ``running`` sequences."""
        self.requests = dict.fromkeys((CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH), 0)
        self.faults = dict.fromkeys(FAULT_KINDS, 0)
        self.completed = self.invalid = self.rate_limited = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.prefix_cache_hit_tokens = self.prefix_cache_miss_tokens = 0
        self.peak_in_flight = running

    def snapshot(self, gate: _Gate, cache_used_tokens: int) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "completed": self.completed,
            "invalid": self.invalid,
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "running": gate.running,
            "waiting": gate.waiting,
            "in_flight": gate.running,
            "queued": gate.waiting,
            "peak_in_flight": self.peak_in_flight,
            "max_concurrency": gate.limit,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "prefix_cache_hit_tokens": self.prefix_cache_hit_tokens,
            "prefix_cache_miss_tokens": self.prefix_cache_miss_tokens,
            "prefix_cache_used_tokens": cache_used_tokens,
        }


def _error(status: int, message: str, type_: str, param: str | None, code: str | None) -> Response:
    envelope = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(envelope, status_code=status)


def _rate_limited(message: str) -> Response:
    response = _error(429, message, "requests", None, "rate_limit_exceeded")
    response.headers["Retry-After"] = "1"
    return response


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


def _rendered(item: str | list[int]) -> tuple[str, ...]:
    """A completion prompt as prefix-cache tokens (token ids marked apart from words)."""
    return tuple(item.split()) if isinstance(item, str) else tuple(f"\x00{t}" for t in item)


def _digest(value: Any) -> bytes:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()


def _parse_chat(body: dict[str, Any], config: SimConfig) -> _Job:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list", "messages")
    rendered: list[str] = []  # 3 tokens of template per message, as counted in prompt_tokens
    for message in messages:
        if not isinstance(message, dict):
            raise _BadRequest("each message must be an object", "messages")
        rendered += ("<|im_start|>", str(message.get("role")))
        content = message.get("content")
        if isinstance(content, str):
            rendered += content.split()
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    rendered += part["text"].split()
        rendered.append("<|im_end|>")
    limit_keys = ("max_completion_tokens", "max_tokens")
    n, finish = _max_tokens(body, limit_keys, config.default_max_tokens)
    text = "[simulated] " + _words(_digest(body), n)
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish,
        "logprobs": None,
    }
    answer = {"object": "chat.completion", "choices": [choice]}
    return _Job(max(1, len(rendered)), n, answer, (tuple(rendered),))


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
    answer = {"object": "text_completion", "choices": choices}
    return _Job(prompt_tokens, n * len(prompts), answer, tuple(_rendered(p) for p in prompts))


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


Sleep = Callable[[float], Awaitable[None]]
"""How the app waits out a service time (``asyncio.sleep``; tests pass one that records)."""

_LIVE_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "int | None": (int, type(None)),
}  # SimConfig annotations (strings under postponed evaluation) -> accepted JSON value types


def updated_config(config: SimConfig, changes: object) -> SimConfig:
    """``config`` with ``changes`` (a JSON object of SimConfig fields) applied, validated.

    Every scalar field may change (``capacity_schedule`` only at start). Raises ValueError on a
    body that is not a non-empty object, an unknown field, a value of the wrong type (booleans
    are not numbers) or a result that :meth:`SimConfig.validate` refuses.
    """
    if not isinstance(changes, dict) or not changes:
        raise ValueError("body must be a non-empty JSON object of engine-sim config fields")
    annotations = {f.name: str(f.type) for f in fields(SimConfig)}
    values: dict[str, Any] = {}
    for name, value in changes.items():
        kinds = _LIVE_TYPES.get(annotations.get(name, ""))
        if kinds is None:
            raise ValueError(f"{name!r} is not a config field that can be changed live")
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"{name!r} must be {annotations[name]}, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name!r} must be finite")
        is_float = annotations[name] == "float"
        values[name] = float(value) if is_float and isinstance(value, int) else value
    updated = replace(config, **values)
    updated.validate()
    return updated


class _Simulator:
    """State of one app: config, fault RNG, FIFO concurrency gate, prefix cache and counters."""

    def __init__(self, config: SimConfig, sleep: Sleep) -> None:
        self.config = config
        self.sleep = sleep
        self.rng = random.Random(config.seed)
        self.gate = _Gate(config.max_concurrency)
        self.cache = PrefixCache(config.prefix_cache_tokens, config.prefix_block_tokens)
        self.stats = _Stats()
        self.stats.reset(running=0)

    def apply(self, config: SimConfig) -> None:
        """Switch to a validated ``config``; requests already admitted keep their service time."""
        old, self.config = self.config, config
        self.gate.set_limit(config.max_concurrency)
        if config.seed != old.seed:
            self.rng = random.Random(config.seed)
        if config.prefix_block_tokens != old.prefix_block_tokens:  # old hashes name other blocks
            self.cache = PrefixCache(config.prefix_cache_tokens, config.prefix_block_tokens)
        else:
            self.cache.resize(config.prefix_cache_tokens)

    def endpoint(self, path: str, parse: _Parser) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await self.infer(path, parse, request)

        return handle

    async def infer(self, path: str, parse: _Parser, request: Request) -> Response:
        """Validate (400), maybe inject a fault or refuse (429), else queue, serve, answer 200."""
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
            if fault == "rate_limit":
                self.stats.rate_limited += 1
            return await self.fault_response(fault)
        max_queue = self.config.max_queue
        if max_queue is not None and not self.gate.free() and self.gate.waiting >= max_queue:
            self.stats.rate_limited += 1
            waiting = self.gate.waiting
            return _rate_limited(f"engine-sim is overloaded: {waiting} requests wait for a slot")
        async with self.slot():
            cached = self.admit_prefix(job)
            config = self.config
            running = self.gate.running
            await self.sleep(
                config.service_time_s(job.prompt_tokens, job.completion_tokens, cached, running)
            )
        self.stats.completed += 1
        self.stats.prompt_tokens += job.prompt_tokens
        self.stats.completion_tokens += job.completion_tokens
        self.stats.prefix_cache_hit_tokens += cached
        self.stats.prefix_cache_miss_tokens += job.prompt_tokens - cached
        header: dict[str, Any] = {"model": body["model"]}
        prefix = {"chat.completion": "chatcmpl-sim-", "text_completion": "cmpl-sim-"}
        if job.body["object"] in prefix:
            header["id"] = prefix[job.body["object"]] + request.scope[_REQUEST_ID_KEY]
            header["created"] = int(time.time())
            total = job.prompt_tokens + job.completion_tokens
            usage: dict[str, Any] = {
                "prompt_tokens": job.prompt_tokens,
                "completion_tokens": job.completion_tokens,
                "total_tokens": total,
            }
            if config.prefix_cache_tokens > 0:  # as OpenAI and vLLM report a prompt cache
                usage["prompt_tokens_details"] = {"cached_tokens": cached}
            job.body["usage"] = usage
        return JSONResponse({**header, **job.body})

    def admit_prefix(self, job: _Job) -> int:
        """Cached prompt tokens of ``job`` on admission; its blocks then enter the cache."""
        if self.config.prefix_cache_tokens == 0:
            return 0
        return sum(self.cache.admit(tokens) for tokens in job.sequences)

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
        return _rate_limited("simulated rate limit")

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of ``max_concurrency`` slots, waiting in FIFO order if none is free."""
        await self.gate.acquire()
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.gate.running)
        try:
            yield
        finally:
            self.gate.release()

    async def follow_schedule(self, schedule: Iterable[tuple[float, int]]) -> None:
        """Set ``max_concurrency`` at each (seconds since this call, limit) of ``schedule``."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for at, limit in sorted(schedule):
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            self.apply(replace(self.config, max_concurrency=limit))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Run the capacity schedule, if any, for as long as the app is served."""
        schedule = self.config.capacity_schedule
        task = asyncio.create_task(self.follow_schedule(schedule)) if schedule else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def models(self, request: Request) -> Response:
        model = {"id": "sim", "object": "model", "created": 0, "owned_by": "inferbatch-sim"}
        return JSONResponse({"object": "list", "data": [model]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot(self.gate, self.cache.used_tokens)

    async def get_stats(self, request: Request) -> Response:
        return JSONResponse(self.snapshot())

    async def reset_stats(self, request: Request) -> Response:
        self.stats.reset(self.gate.running)
        if request.query_params.get("cache") in ("1", "true"):
            self.cache.clear()
        return JSONResponse(self.snapshot())

    async def get_config(self, request: Request) -> Response:
        return JSONResponse(asdict(self.config))

    async def set_config(self, request: Request) -> Response:
        try:
            config = updated_config(self.config, json.loads(await request.body()))
        except ValueError as exc:  # json.JSONDecodeError included
            return _error(400, str(exc), "invalid_request_error", None, None)
        self.apply(config)
        return JSONResponse(asdict(config))


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error(status, str(detail), "invalid_request_error", None, None)


def create_app(config: SimConfig, *, sleep: Sleep = asyncio.sleep) -> Starlette:
    """Build a fresh engine-sim ASGI app; all state (RNG, queue, cache, counters) lives in it.

    ``sleep`` waits out each request's service time (in seconds, from
    :meth:`SimConfig.service_time_s`). The capacity schedule runs in the app's lifespan, so it
    applies under uvicorn, not under a bare ``httpx.ASGITransport``.
    """
    config.validate()
    sim = _Simulator(config, sleep)
    routes = [Route(path, sim.endpoint(path, parse), methods=["POST"]) for path, parse in _PARSERS]
    routes += [
        Route("/v1/models", sim.models, methods=["GET"]),
        Route("/health", sim.health, methods=["GET"]),
        Route("/sim/stats", sim.get_stats, methods=["GET"]),
        Route("/sim/reset", sim.reset_stats, methods=["POST"]),
        Route("/sim/config", sim.get_config, methods=["GET"]),
        Route("/sim/config", sim.set_config, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_RequestIdMiddleware)],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=sim.lifespan,
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
