"""Faults lose nothing and complete nothing twice, on a batch of 10,000 requests.

Each test runs real api, scheduler, worker and engine-sim processes, injects one kind of
fault repeatedly, and ends with the batch completed, every custom_id exactly once across
the output and error files, no request settled twice (an audit trigger records every
transition to a final status), and request_counts equal to the files' contents.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from tests.chaos.conftest import ChaosDatabase
from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file, parse_jsonl
from tests.stack import Stack, wait_http

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

N = 10_000
FAST_ENV = {
    "INFERBATCH_LEASE_SECONDS": "2",
    "INFERBATCH_DRAIN_SECONDS": "0.5",
    "INFERBATCH_MAX_ATTEMPTS": "50",
    "INFERBATCH_ENGINE_MAX_IN_FLIGHT": "64",
    "INFERBATCH_MAX_REQUESTS_PER_BATCH": str(N),
}


def _submit(client: openai.OpenAI) -> str:
    f = client.files.create(file=("in.jsonl", chat_file(N)), purpose="batch")
    return client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def _wait_in_progress(client: openai.OpenAI, batch_id: str) -> None:
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch_id).status == "validating":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _check_exactly_once(client: openai.OpenAI, db: ChaosDatabase, batch_id: str) -> None:
    done = wait_batch(client, batch_id, timeout=240)
    assert done.status == "completed", done
    out = parse_jsonl(client.files.content(done.output_file_id).text) if done.output_file_id else []
    err = parse_jsonl(client.files.content(done.error_file_id).text) if done.error_file_id else []
    ids = [r["custom_id"] for r in out + err]
    assert len(ids) == N and set(ids) == {f"req-{i}" for i in range(N)}
    assert done.request_counts is not None
    assert (
        done.request_counts.total,
        done.request_counts.completed,
        done.request_counts.failed,
    ) == (N, len(out), len(err))
    with psycopg.connect(db.url) as conn:
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT request_id FROM completion_audit "
            "GROUP BY request_id HAVING count(*) > 1) t"
        ).fetchone()
        settled = conn.execute("SELECT count(DISTINCT request_id) FROM completion_audit").fetchone()
    assert twice == (0,)
    assert settled == (N,)


def _churn(stop: threading.Event, every: float, action: Callable[[int], None]) -> threading.Thread:
    def loop() -> None:
        i = 0
        while not stop.wait(every):
            action(i)
            i += 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _stack(
    db: ChaosDatabase,
    tmp_path: Path,
    sim_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Stack:
    return Stack(
        db.url,
        tmp_path,
        sim_args=("--max-concurrency", "128", *sim_args),
        env={**FAST_ENV, **(env or {})},
    )


def test_sigkill_random_workers(chaos_db: ChaosDatabase, tmp_path: Path) -> None:
    s = _stack(chaos_db, tmp_path, sim_args=("--base-latency-s", "0.02"))
    s.start(spot=2, dedicated=1)
    rng = random.Random(1)
    stop = threading.Event()
    try:
        client = s.client()
        batch_id = _submit(client)
        _wait_in_progress(client, batch_id)

        def kill(i: int) -> None:
            victims = [n for n in s.procs if n.startswith("worker-")]
            name = rng.choice(victims)
            pool = "dedicated" if "dedicated" in name else "spot"
            s.stop(name, sig=signal.SIGKILL)
            s.spawn(f"worker-{pool}-r{i}", ["worker", "--pool", pool])

        churn = _churn(stop, 2.0, kill)
        _check_exactly_once(client, chaos_db, batch_id)
        stop.set()
        churn.join()
    finally:
        stop.set()
        s.close()


def test_repeated_spot_interruptions(chaos_db: ChaosDatabase, tmp_path: Path) -> None:
    # requests take longer than the drain period, so each interruption loses some work
    s = _stack(
        chaos_db,
        tmp_path,
        sim_args=("--base-latency-s", "0.3"),
        env={"INFERBATCH_DRAIN_SECONDS": "0.1"},
    )
    s.start(spot=3, dedicated=1)  # escalated requests (2+ interruptions) run there
    stop = threading.Event()
    try:
        client = s.client()
        batch_id = _submit(client)
        _wait_in_progress(client, batch_id)

        def interrupt(i: int) -> None:
            victim = sorted(n for n in s.procs if n.startswith("worker-spot"))[0]
            s.stop(victim, sig=signal.SIGTERM, timeout=20)
            s.spawn(f"worker-spot-r{i}", ["worker", "--pool", "spot"])

        churn = _churn(stop, 1.5, interrupt)
        _check_exactly_once(client, chaos_db, batch_id)
        stop.set()
        churn.join()
        with psycopg.connect(chaos_db.url) as conn:
            interrupted = conn.execute("SELECT sum(interruptions) FROM requests").fetchone()
        assert interrupted is not None and interrupted[0] > 0
    finally:
        stop.set()
        s.close()


def test_postgres_restart_mid_run(chaos_db: ChaosDatabase, tmp_path: Path) -> None:
    s = _stack(chaos_db, tmp_path, sim_args=("--base-latency-s", "0.05"))
    s.start(spot=2, dedicated=1)
    try:
        client = s.client()
        batch_id = _submit(client)
        _wait_in_progress(client, batch_id)
        time.sleep(1.0)
        chaos_db.restart()
        # the api keeps answering health, and answers 503 (not 500) while the pool reconnects
        assert httpx.get(s.url + "/healthz").status_code == 200
        _check_exactly_once(client, chaos_db, batch_id)
        for name, proc in s.procs.items():
            assert proc.poll() is None, f"{name} exited after the restart"
    finally:
        s.close()


def test_engine_injecting_30_percent_failures(chaos_db: ChaosDatabase, tmp_path: Path) -> None:
    s = _stack(
        chaos_db,
        tmp_path,
        sim_args=(
            "--error-rate",
            "0.15",
            "--timeout-rate",
            "0.05",
            "--hang-s",
            "2",
            "--drop-rate",
            "0.1",
            "--seed",
            "11",
        ),
        env={
            "INFERBATCH_ENGINE_TIMEOUT_SECONDS": "1",
            "INFERBATCH_RETRY_BASE_SECONDS": "0.05",
            "INFERBATCH_RETRY_MAX_SECONDS": "0.5",
        },
    )
    s.start(spot=2, dedicated=1)
    try:
        client = s.client()
        batch_id = _submit(client)
        _check_exactly_once(client, chaos_db, batch_id)
        stats = httpx.get(f"{s.sim_url}/sim/stats").json()
        assert stats["faults"]["error"] > 0 and stats["faults"]["drop"] > 0
        assert stats["faults"]["timeout"] > 0
    finally:
        s.close()


def test_engine_down_then_back_fails_nothing(chaos_db: ChaosDatabase, tmp_path: Path) -> None:
    s = _stack(chaos_db, tmp_path, env={"INFERBATCH_MAX_ATTEMPTS": "2"})
    s.start(spot=1, dedicated=1)
    try:
        client = s.client()
        port = (s.sim_url or "").rsplit(":", 1)[1]
        s.stop("engine-sim")
        batch_id = _submit(client)
        time.sleep(4)  # workers see the engine refuse connections for a while
        with psycopg.connect(chaos_db.url) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'failed'), "
                "max(failed_attempts) FROM requests"
            ).fetchone()
        assert row == (0, 0)
        s.spawn("engine-sim", ["engine-sim", "--port", port, "--max-concurrency", "128"])
        wait_http(f"{s.sim_url}/health")
        _check_exactly_once(client, chaos_db, batch_id)
    finally:
        s.close()
