"""Engine replicas: one is SIGKILLed mid-run and started again. Its requests go to the other
replica within their attempt (no retry budget spent, nothing failed), it gets no new work
while down, it is probed back in once it answers, and every custom_id ends exactly once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from inferbatch.engines.local import free_port
from tests.chaos.conftest import ChaosDatabase
from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file, parse_jsonl
from tests.stack import Stack, wait_http

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

N = 6000
SIM = ("--max-concurrency", "32", "--base-latency-s", "0.2")


def _served(url: str) -> int:
    stats = httpx.get(f"{url}/sim/stats", timeout=5).json()
    return int(stats.get("completed", stats.get("requests", 0)))


def test_a_killed_replica_loses_nothing_and_is_probed_back_in(
    chaos_db: ChaosDatabase, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    s = Stack(
        chaos_db.url,
        tmp_path,
        engine_url=",".join(f"{u}/v1" for u in urls),
        env={
            "INFERBATCH_MAX_ATTEMPTS": "2",  # a charged failure would show as failed_attempts
            "INFERBATCH_ENGINE_MAX_IN_FLIGHT": "32",
            "INFERBATCH_MAX_REQUESTS_PER_BATCH": str(N),
            "INFERBATCH_LEASE_SECONDS": "2",
        },
    )
    engines = {}
    for name, port in zip(("engine-a", "engine-b"), ports, strict=True):
        engines[name] = s.spawn(name, ["engine-sim", "--port", str(port), *SIM])
    for url, proc in zip(urls, engines.values(), strict=True):
        wait_http(url + "/health", proc=proc)
    s.start(spot=1, dedicated=0)
    try:
        client = s.client()
        f = client.files.create(file=("in.jsonl", chat_file(N)), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 120
        while _served(urls[1]) < 300:  # both replicas in use
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert _served(urls[0]) > 0
        s.stop("engine-b", signal.SIGKILL)
        time.sleep(3)  # the worker finds it dead and runs everything on engine-a
        with psycopg.connect(chaos_db.url) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'failed'), "
                "coalesce(max(failed_attempts), 0) FROM requests"
            ).fetchone()
        assert row == (0, 0)
        assert client.batches.retrieve(batch.id).status == "in_progress"
        s.spawn("engine-b", ["engine-sim", "--port", str(ports[1]), *SIM])
        wait_http(urls[1] + "/health")
        done = wait_batch(client, batch.id, timeout=300)
        assert done.status == "completed", done
        assert _served(urls[1]) > 0  # probed back in: the restarted replica got work
        out = parse_jsonl(client.files.content(done.output_file_id or "").text)
        ids = sorted(r["custom_id"] for r in out)
        assert ids == sorted(f"req-{i}" for i in range(N))
        assert done.request_counts is not None and done.request_counts.failed == 0
        with psycopg.connect(chaos_db.url) as conn:
            twice = conn.execute(
                "SELECT count(*) FROM (SELECT request_id FROM completion_audit "
                "GROUP BY request_id HAVING count(*) > 1) t"
            ).fetchone()
            charged = conn.execute(
                "SELECT coalesce(max(failed_attempts), 0) FROM requests"
            ).fetchone()
        assert twice == (0,)
        assert charged == (0,)
    finally:
        s.close()
