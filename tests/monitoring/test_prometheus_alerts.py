"""A real Prometheus with the real rule file scrapes ``inferbatch up``: every rule evaluates
without error, and when the engine dies under queued work the queue-stalled alert goes
pending.

Time scale: the rule file is loaded from a copy in which every duration written in minutes
(range windows such as ``[10m]`` and ``for: 5m``) is the same number of seconds
(``[10s]``, ``for: 5s``), so that ten minutes of the real rules pass in ten seconds of
test. The expressions are otherwise unchanged. Scrapes and rule evaluations run every
second.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from inferbatch.engines.local import free_port
from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file
from tests.monitoring.monitoring import RULES, tool
from tests.stack import stop_process, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY = "ib-monitoring-test-key"
MINUTES = re.compile(r"(\[|for: )(\d+)m\b")


def minutes_as_seconds(rules: str) -> str:
    """The documented substitution: ``[10m]`` -> ``[10s]``, ``for: 5m`` -> ``for: 5s``."""
    return MINUTES.sub(r"\g<1>\g<2>s", rules)


def port_block(n: int) -> int:
    """The first of ``n`` consecutive free ports (``inferbatch up`` uses M, M+1, M+2)."""
    for _ in range(50):
        first = free_port()
        try:
            for port in range(first, first + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no block of free ports")


def spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    stop_process(proc, sig, timeout)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        answer = httpx.get(self.url + path, params=params, timeout=5).json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def value(self, expr: str) -> float | None:
        result = self.get("/api/v1/query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def alert_states(self, name: str) -> set[str]:
        return {
            a["state"]
            for a in self.get("/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == name
        }

    def rules(self) -> list[dict[str, Any]]:
        return [r for g in self.get("/api/v1/rules")["groups"] for r in g["rules"]]


def wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def system(db_url: str, tmp_path: Path) -> Iterator[tuple[openai.OpenAI, Prometheus, Any]]:
    """``inferbatch up`` on an engine-sim this test owns, scraped by Prometheus."""
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBATCH_")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sim_port = free_port()
        sim = spawn(
            [sys.executable, "-m", "inferbatch", "engine-sim", "--port", str(sim_port)],
            logs / "engine-sim.log",
            env,
        )
        procs.append(sim)
        wait_http(f"http://127.0.0.1:{sim_port}/health", proc=sim)

        api_port, metrics_port = free_port(), port_block(3)
        up_env = env | {
            "INFERBATCH_DATABASE_URL": db_url,
            "INFERBATCH_DATA_DIR": str(tmp_path / "data"),
            "INFERBATCH_PORT": str(api_port),
            "INFERBATCH_METRICS_PORT": str(metrics_port),
            "INFERBATCH_API_KEY": KEY,
            "INFERBATCH_DRAIN_SECONDS": "2",
            "INFERBATCH_SCHEDULER_TICK_SECONDS": "0.2",
            "INFERBATCH_WORKER_POLL_SECONDS": "0.2",
        }
        engine = f"http://127.0.0.1:{sim_port}/v1"
        up = spawn(
            [sys.executable, "-m", "inferbatch", "up", "--engine", engine],
            logs / "up.log",
            up_env,
        )
        procs.insert(0, up)
        api = f"http://127.0.0.1:{api_port}"
        wait_http(api + "/readyz", timeout=90, proc=up)
        workers = [f"127.0.0.1:{metrics_port + i}" for i in range(3)]
        for target in workers:
            wait_http(f"http://{target}/metrics", proc=up)

        rules = tmp_path / "inferbatch.rules.yml"
        rules.write_text(minutes_as_seconds(RULES.read_text()))
        prom_port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": "inferbatch-api", "static_configs": [{"targets": [api[7:]]}]},
                {"job_name": "inferbatch-scheduler", "static_configs": [{"targets": workers[:1]}]},
                {"job_name": "inferbatch-worker", "static_configs": [{"targets": workers[1:]}]},
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = spawn(
            [
                tool("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            logs / "prometheus.log",
            env,
        )
        procs.append(prometheus)
        prom = Prometheus(f"http://127.0.0.1:{prom_port}")
        wait_http(prom.url + "/-/ready", proc=prometheus)
        client = openai.OpenAI(base_url=api + "/v1", api_key=KEY, max_retries=0)
        yield client, prom, sim
    except BaseException:
        for log in sorted(logs.glob("*.log")):
            print(f"==== {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        for proc in procs:
            stop(proc, signal.SIGINT if proc is procs[0] else signal.SIGTERM)


def submit(client: openai.OpenAI, n: int, prefix: str) -> str:
    upload = client.files.create(file=("in.jsonl", chat_file(n, prefix)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="1h"
    )
    return batch.id


def test_queue_stalled_goes_pending_when_the_engine_dies(
    system: tuple[openai.OpenAI, Prometheus, subprocess.Popen[bytes]],
) -> None:
    client, prom, sim = system
    assert wait_batch(client, submit(client, 5, "ok")).status == "completed"
    wait_for(
        "Prometheus to see the finished requests",
        lambda: (prom.value("inferbatch:requests_finished:max") or 0) >= 5,
    )

    def targets_up() -> bool:
        targets = prom.get("/api/v1/targets")["activeTargets"]
        return len(targets) == 4 and {t["health"] for t in targets} == {"up"}

    wait_for("the api, scheduler and both workers to be scraped", targets_up, timeout=20)

    # Every rule evaluates on real series without an error.
    def evaluated() -> list[dict[str, Any]] | None:
        rules = prom.rules()
        return rules if all(r["health"] == "ok" for r in rules) else None

    assert wait_for("every rule to evaluate", evaluated, timeout=20)
    assert prom.alert_states("InferbatchQueueStalled") == set()

    sim.kill()
    sim.wait()
    submit(client, 10, "stuck")
    wait_for(
        "the queued requests in Prometheus",
        lambda: (prom.value("inferbatch:queue_depth:max") or 0) > 0,
    )
    wait_for(
        "InferbatchQueueStalled to go pending",
        lambda: "pending" in prom.alert_states("InferbatchQueueStalled"),
        timeout=90,
    )
    wait_for(
        "InferbatchEngineDown",
        lambda: prom.alert_states("InferbatchEngineDown") & {"pending", "firing"},
        timeout=60,
    )
