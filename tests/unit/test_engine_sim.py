"""Tests for the simulated OpenAI-compatible engine (inferbatch.engines.sim)."""

from __future__ import annotations

import asyncio
import base64
import math
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from inferbatch.engines.sim import SimConfig, SimulatedConnectionDrop, create_app

pytestmark = pytest.mark.unit

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
SRC_DIR = Path(__file__).resolve().parents[1] / "src"


def _client(config: SimConfig) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(config))
    return httpx.AsyncClient(transport=transport, base_url="http://sim")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with _client(SimConfig(seed=0)) as c:
        yield c


def _chat(content: Any = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "any-model", "messages": [{"role": "user", "content": content}], **extra}


def _generated_words(text: str) -> list[str]:
    assert text.startswith("[simulated] ")
    return text.removeprefix("[simulated] ").split()


async def test_chat_completion_shape_and_counts(client: httpx.AsyncClient) -> None:
    body = {
        "model": "my-org/some-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one two three"},
        ],
    }
    resp = await client.post(CHAT, json=body)
    assert resp.status_code == 200
    completion = ChatCompletion.model_validate(resp.json())
    assert completion.id.startswith("chatcmpl-sim-")
    assert completion.object == "chat.completion"
    assert completion.model == "my-org/some-model"
    choice = completion.choices[0]
    assert (choice.index, choice.message.role, choice.finish_reason) == (0, "assistant", "stop")
    assert choice.message.content is not None
    assert len(_generated_words(choice.message.content)) == 16  # default_max_tokens
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2 + 3 + 3 * 2
    assert completion.usage.completion_tokens == 16
    assert completion.usage.total_tokens == 27
    assert resp.headers["x-request-id"]


async def test_chat_max_tokens_and_content_parts(client: httpx.AsyncClient) -> None:
    parts = [{"type": "text", "text": "a b c d"}, {"type": "image_url", "image_url": {"url": "x"}}]
    resp = await client.post(CHAT, json=_chat(parts, max_completion_tokens=5, max_tokens=9))
    completion = ChatCompletion.model_validate(resp.json())
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content is not None
    assert len(_generated_words(completion.choices[0].message.content)) == 5
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 5)

    resp = await client.post(CHAT, json=_chat("", max_tokens=3))
    usage = resp.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 3)


async def test_output_is_deterministic(client: httpx.AsyncClient) -> None:
    first = (await client.post(CHAT, json=_chat("same input"))).json()
    second = (await client.post(CHAT, json=_chat("same input"))).json()
    other = (await client.post(CHAT, json=_chat("different input"))).json()
    assert first["choices"] == second["choices"]
    assert first["id"] != second["id"]
    assert first["choices"][0]["message"]["content"] != other["choices"][0]["message"]["content"]
    async with _client(SimConfig(seed=123)) as fresh_app:
        again = (await fresh_app.post(CHAT, json=_chat("same input"))).json()
    assert again["choices"] == first["choices"]


async def test_completions(client: httpx.AsyncClient) -> None:
    resp = await client.post(COMPLETIONS, json={"model": "m", "prompt": "say hi", "max_tokens": 4})
    completion = Completion.model_validate(resp.json())
    assert completion.id.startswith("cmpl-sim-")
    assert completion.object == "text_completion"
    assert completion.model == "m"
    assert len(completion.choices) == 1
    assert completion.choices[0].finish_reason == "length"
    assert len(_generated_words(completion.choices[0].text)) == 4
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 4)

    resp = await client.post(COMPLETIONS, json={"model": "m", "prompt": ["a b", "c", [1, 2, 3]]})
    completion = Completion.model_validate(resp.json())
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert {c.finish_reason for c in completion.choices} == {"stop"}
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (6, 48)


async def test_embeddings(client: httpx.AsyncClient) -> None:
    inputs = ["first text", "second one here", "first text"]
    resp = await client.post(EMBEDDINGS, json={"model": "emb", "input": inputs})
    parsed = CreateEmbeddingResponse.model_validate(resp.json())
    assert parsed.object == "list"
    assert parsed.model == "emb"
    assert [d.index for d in parsed.data] == [0, 1, 2]
    vectors = [d.embedding for d in parsed.data]
    assert all(len(v) == 16 for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-9) for v in vectors)
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]
    assert (parsed.usage.prompt_tokens, parsed.usage.total_tokens) == (7, 7)

    single = (await client.post(EMBEDDINGS, json={"model": "x", "input": "first text"})).json()
    assert single["data"][0]["embedding"] == vectors[0]

    body = {"model": "x", "input": "first text", "encoding_format": "base64", "dimensions": 8}
    encoded = (await client.post(EMBEDDINGS, json=body)).json()["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    assert math.isclose(math.fsum(x * x for x in decoded), 1.0, rel_tol=1e-5)

    tokens = (await client.post(EMBEDDINGS, json={"model": "x", "input": [[1, 2], [3]]})).json()
    assert len(tokens["data"]) == 2
    assert tokens["usage"]["prompt_tokens"] == 3


@pytest.mark.parametrize(
    ("path", "content", "param"),
    [
        (CHAT, b"not json", None),
        (CHAT, b"[1, 2]", None),
        (CHAT, b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (CHAT, b'{"model": "m"}', "messages"),
        (CHAT, b'{"model": "m", "messages": []}', "messages"),
        (CHAT, b'{"model": "m", "messages": [{"content": "x"}], "max_tokens": 0}', "max_tokens"),
        (CHAT, b'{"model": "m", "messages": [{"content": "x"}], "stream": true}', "stream"),
        (COMPLETIONS, b'{"model": "m"}', "prompt"),
        (COMPLETIONS, b'{"model": "m", "prompt": 5}', "prompt"),
        (EMBEDDINGS, b'{"model": "m"}', "input"),
        (EMBEDDINGS, b'{"model": "m", "input": []}', "input"),
        (EMBEDDINGS, b'{"model": "m", "input": "x", "encoding_format": "hex"}', "encoding_format"),
    ],
)
async def test_bad_request_bodies(
    client: httpx.AsyncClient, path: str, content: bytes, param: str | None
) -> None:
    resp = await client.post(path, content=content)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert "code" in error
    assert resp.headers["x-request-id"]


async def test_models_health_and_unknown_path(client: httpx.AsyncClient) -> None:
    models = await client.get("/v1/models")
    assert models.json() == {
        "object": "list",
        "data": [{"id": "sim", "object": "model", "created": 0, "owned_by": "inferbatch-sim"}],
    }
    assert (await client.get("/health")).json() == {"status": "ok"}
    missing = await client.get("/v1/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"]
    assert missing.headers["x-request-id"]


async def test_error_rate_gives_500_envelope() -> None:
    async with _client(SimConfig(error_rate=1.0, seed=1)) as c:
        resp = await c.post(CHAT, json=_chat())
        stats = (await c.get("/sim/stats")).json()
    assert resp.status_code == 500
    assert resp.json()["error"]["type"] == "server_error"
    assert "simulated" in resp.json()["error"]["message"]
    assert resp.headers["x-request-id"]
    assert stats["faults"] == {"error": 1, "timeout": 0, "drop": 0, "rate_limit": 0}
    assert stats["completed"] == 0


async def test_rate_limit_gives_429_with_retry_after() -> None:
    async with _client(SimConfig(rate_limit_rate=1.0)) as c:
        resp = await c.post(EMBEDDINGS, json={"model": "m", "input": "x"})
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert resp.headers["x-request-id"]


async def test_timeout_rate_hangs_then_504() -> None:
    async with _client(SimConfig(timeout_rate=1.0, hang_s=0.01)) as c:
        resp = await c.post(COMPLETIONS, json={"model": "m", "prompt": "x"})
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "simulated_timeout"


async def test_drop_in_process_raises_transport_error() -> None:
    async with _client(SimConfig(drop_rate=1.0)) as c:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await c.post(CHAT, json=_chat())
        stats = (await c.get("/sim/stats")).json()
    assert isinstance(info.value, SimulatedConnectionDrop)
    assert stats["faults"]["drop"] == 1


async def test_fault_mix_is_reproducible_with_seed() -> None:
    config = SimConfig(error_rate=0.3, rate_limit_rate=0.3, seed=42)

    async def statuses() -> list[int]:
        async with _client(config) as c:
            return [(await c.post(CHAT, json=_chat())).status_code for _ in range(40)]

    first, second = await statuses(), await statuses()
    assert first == second
    assert set(first) == {200, 429, 500}


async def test_stats_count_and_reset() -> None:
    async with _client(SimConfig(seed=0)) as c:
        await c.post(CHAT, json=_chat("a b", max_tokens=2))
        await c.post(CHAT, content=b"{")
        await c.post(EMBEDDINGS, json={"model": "m", "input": ["x", "y"]})
        stats = (await c.get("/sim/stats")).json()
        reset = (await c.post("/sim/reset")).json()
        after = (await c.get("/sim/stats")).json()
    assert stats["requests"] == {CHAT: 2, COMPLETIONS: 0, EMBEDDINGS: 1}
    assert stats["requests_total"] == 3
    assert (stats["completed"], stats["invalid"]) == (2, 1)
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (5 + 2, 2)
    assert (stats["in_flight"], stats["peak_in_flight"], stats["queued"]) == (0, 1, 0)
    assert not any(isinstance(v, list) for v in stats.values())
    for snapshot in (reset, after):
        assert snapshot["requests_total"] == 0
        assert snapshot["completed"] == snapshot["invalid"] == snapshot["peak_in_flight"] == 0
        assert set(snapshot["faults"].values()) == {0}


async def test_concurrency_is_capped() -> None:
    async with _client(SimConfig(max_concurrency=2, base_latency_s=0.2)) as c:
        responses = await asyncio.gather(*(c.post(CHAT, json=_chat(f"r{i}")) for i in range(4)))
        stats = (await c.get("/sim/stats")).json()
    assert [r.status_code for r in responses] == [200] * 4
    assert stats["peak_in_flight"] == 2
    assert (stats["completed"], stats["in_flight"], stats["queued"]) == (4, 0, 0)


async def test_queue_is_fifo() -> None:
    order: list[int] = []
    async with _client(SimConfig(max_concurrency=1, base_latency_s=0.03)) as c:

        async def call(i: int) -> None:
            await c.post(CHAT, json=_chat(f"request {i}"))
            order.append(i)

        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(call(i)))
            for _ in range(2000):  # wait until request i is admitted or queued, then send the next
                stats = (await c.get("/sim/stats")).json()
                if stats["in_flight"] + stats["queued"] + stats["completed"] == i + 1:
                    break
                await asyncio.sleep(0.001)
            else:
                pytest.fail(f"request {i} never reached the queue: {stats}")
        await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"error_rate": 1.5},
        {"drop_rate": -0.1},
        {"error_rate": 0.6, "timeout_rate": 0.6},
        {"max_concurrency": 0},
        {"prefill_tokens_per_s": 0.0},
        {"decode_tokens_per_s": -1.0},
        {"base_latency_s": -1.0},
        {"default_max_tokens": 0},
        {"embedding_dim": 0},
    ],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    config = SimConfig(**kwargs)
    with pytest.raises(ValueError):
        config.validate()
    with pytest.raises(ValueError):
        create_app(config)


def test_config_defaults_validate_and_service_time() -> None:
    SimConfig().validate()
    config = SimConfig(base_latency_s=0.5, prefill_tokens_per_s=100.0, decode_tokens_per_s=10.0)
    assert config.service_time_s(50, 20) == pytest.approx(0.5 + 0.5 + 2.0)


# --- real server (uvicorn in a subprocess) ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class _Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> str:
        """Terminate the server (idempotent) and return what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], _Server]]:
    """Start ``run(SimConfig(<args>))`` in a subprocess; returns it once /health answers."""
    servers: list[_Server] = []
    pythonpath = os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}

    def start(config_args: str) -> _Server:
        port = _free_port()
        code = (
            "from inferbatch.engines.sim import SimConfig, run; "
            f"run(SimConfig({config_args}), '127.0.0.1', {port})"
        )
        log = tmp_path_factory.mktemp("engine-sim") / "stderr.log"
        with log.open("wb") as stderr:  # a file, so a chatty server never blocks on a pipe
            proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=stderr)
        server = _Server(f"http://127.0.0.1:{port}", proc, log)
        servers.append(server)
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"{server.url}/health").status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"engine-sim did not start: {server.stop()}")
            time.sleep(0.05)

    yield start
    for server in servers:
        server.stop()


@pytest.mark.e2e
def test_real_server_with_openai_sdk(start_server: Callable[[str], _Server]) -> None:
    server = start_server("seed=7")
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    completion = sdk.chat.completions.create(
        model="whatever-model-name",
        messages=[{"role": "user", "content": "hello from the sdk"}],
        max_tokens=6,
    )
    assert completion.model == "whatever-model-name"
    assert completion.choices[0].message.content is not None
    assert len(_generated_words(completion.choices[0].message.content)) == 6
    assert completion.usage is not None and completion.usage.completion_tokens == 6

    # The SDK asks for base64 embeddings by default and decodes them itself.
    embeddings = sdk.embeddings.create(model="emb", input=["a", "b"])
    assert [len(d.embedding) for d in embeddings.data] == [16, 16]
    assert math.isclose(math.fsum(x * x for x in embeddings.data[0].embedding), 1.0, rel_tol=1e-5)

    stats = httpx.get(f"{server.url}/sim/stats").json()
    assert stats["completed"] == 2


@pytest.mark.e2e
def test_real_server_drop_is_a_transport_error(start_server: Callable[[str], _Server]) -> None:
    server = start_server("drop_rate=1.0")
    # The status line and headers arrive, then the socket closes before any body byte.
    with pytest.raises(httpx.RemoteProtocolError, match="without sending complete message body"):
        httpx.post(f"{server.url}/v1/chat/completions", json=_chat())
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    stats = httpx.get(f"{server.url}/sim/stats").json()
    assert stats["faults"]["drop"] == 2
    assert stats["completed"] == 0
    stderr = server.stop()
    assert "Traceback" not in stderr  # injected drops are not logged as app crashes
