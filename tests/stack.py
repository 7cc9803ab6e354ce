"""Real inferbatch processes for end-to-end tests: engine-sim, scheduler, workers, api."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from inferbatch.engines.local import free_port

ADMIN_KEY = "ib-test-admin-key"


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 40.0
) -> int:
    """Signal ``proc`` and wait; kill it if it outlives ``timeout``. Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Stack:
    """Processes of one inferbatch deployment sharing a database and a blob directory."""

    def __init__(
        self,
        db_url: str,
        workdir: Path,
        *,
        engine_url: str | None = None,
        sim_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            **os.environ,
            "INFERBATCH_DATABASE_URL": db_url,
            "INFERBATCH_DATA_DIR": str(workdir),
            "INFERBATCH_API_KEY": ADMIN_KEY,
            "INFERBATCH_SCHEDULER_TICK_SECONDS": "0.2",
            "INFERBATCH_WORKER_POLL_SECONDS": "0.2",
            "INFERBATCH_RETRY_BASE_SECONDS": "0.05",
            "INFERBATCH_RETRY_MAX_SECONDS": "0.5",
            "INFERBATCH_LEASE_SECONDS": "3",
            **(env or {}),
        }
        self.sim_url: str | None = None
        if engine_url is None:
            port = free_port()
            self.spawn("engine-sim", ["engine-sim", "--port", str(port), *sim_args])
            self.sim_url = f"http://127.0.0.1:{port}"
            wait_http(self.sim_url + "/health", proc=self.procs["engine-sim"])
            engine_url = self.sim_url + "/v1"
        self.env["INFERBATCH_ENGINE_URL"] = engine_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_urls: dict[str, str] = {}

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferbatch", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc

    def start(
        self, *, spot: int = 1, dedicated: int = 1, scheduler: bool = True, metrics: bool = False
    ) -> Stack:
        """Start the api and the other roles; with ``metrics`` each of those serves
        /metrics on a port of its own (``metrics_urls``, by process name)."""

        def spawn(name: str, args: list[str]) -> None:
            if metrics:
                port = free_port()
                args = [*args, "--metrics-port", str(port)]
                self.metrics_urls[name] = f"http://127.0.0.1:{port}/metrics"
            self.spawn(name, args)

        self.spawn("api", ["api", "--port", str(self.port)])
        self.metrics_urls["api"] = self.url + "/metrics"
        if scheduler:
            spawn("scheduler", ["scheduler"])
        for i in range(spot):
            spawn(f"worker-spot-{i}", ["worker", "--pool", "spot"])
        for i in range(dedicated):
            spawn(f"worker-dedicated-{i}", ["worker", "--pool", "dedicated"])
        wait_http(self.url + "/readyz", proc=self.procs["api"])
        return self

    def client(self, key: str = ADMIN_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        return stop_process(self.procs.pop(name), sig, timeout)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name, timeout=10)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")
