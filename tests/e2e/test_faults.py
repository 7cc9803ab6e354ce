"""Faults lose nothing and complete nothing twice: engine errors are retried, a killed
worker's requests are rescued, a stopped worker gives its requests back at once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file, parse_jsonl
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _run(stack: Stack, n: int, timeout: float = 90):
    client = stack.client()
    f = client.files.create(file=("in.jsonl", chat_file(n)), purpose="batch")
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return client, b.id


def _results(client, batch):
    out = (
        parse_jsonl(client.files.content(batch.output_file_id).text) if batch.output_file_id else []
    )
    err = parse_jsonl(client.files.content(batch.error_file_id).text) if batch.error_file_id else []
    return out, err


def _completions_per_request(db_url: str) -> list[int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            """SELECT count(res.request_id) FROM request_inputs i
               LEFT JOIN request_results res ON res.request_id = i.id GROUP BY i.custom_id"""
        ).fetchall()
        return [r[0] for r in rows]


def test_engine_errors_are_retried_until_every_request_succeeds(
    db_url: str, tmp_path: Path
) -> None:
    s = Stack(
        db_url,
        tmp_path,
        sim_args=(
            "--error-rate",
            "0.2",
            "--rate-limit-rate",
            "0.1",
            "--drop-rate",
            "0.1",
            "--seed",
            "3",
        ),
        env={"INFERBATCH_MAX_ATTEMPTS": "30"},
    ).start()
    try:
        client, batch_id = _run(s, 300)
        done = wait_batch(client, batch_id, timeout=120)
        out, err = _results(client, done)
        assert done.status == "completed" and err == []
        assert sorted(r["custom_id"] for r in out) == sorted(f"req-{i}" for i in range(300))
        stats = httpx.get(s.sim_url + "/sim/stats").json()
        assert stats["completed"] == 300  # every request reached the engine successfully once
        assert sum(stats["faults"].values()) > 0
    finally:
        s.close()


def test_requests_fail_with_their_last_error_after_max_attempts(
    db_url: str, tmp_path: Path
) -> None:
    s = Stack(
        db_url,
        tmp_path,
        sim_args=(
            "--error-rate",
            "1.0",
        ),
        env={"INFERBATCH_MAX_ATTEMPTS": "3"},
    ).start()
    try:
        client, batch_id = _run(s, 10)
        done = wait_batch(client, batch_id)
        out, err = _results(client, done)
        assert done.status == "completed" and out == []
        assert len(err) == 10 and {r["response"]["status_code"] for r in err} == {500}
        assert done.request_counts and done.request_counts.failed == 10
        stats = httpx.get(s.sim_url + "/sim/stats").json()
        assert stats["requests_total"] == 30  # exactly max_attempts tries each
    finally:
        s.close()


def test_a_sigkilled_worker_loses_nothing(db_url: str, tmp_path: Path) -> None:
    s = Stack(
        db_url,
        tmp_path,
        sim_args=("--base-latency-s", "0.2", "--max-concurrency", "64"),
        env={"INFERBATCH_LEASE_SECONDS": "2"},
    )
    s.start(spot=2, dedicated=0)
    try:
        client, batch_id = _run(s, 400)
        deadline = time.monotonic() + 30
        while (
            client.batches.retrieve(batch_id).request_counts or None
        ) is None or client.batches.retrieve(batch_id).status != "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.0)
        s.stop("worker-spot-0", sig=signal.SIGKILL)
        done = wait_batch(client, batch_id, timeout=120)
        out, err = _results(client, done)
        assert done.status == "completed" and err == []
        ids = [r["custom_id"] for r in out]
        assert len(ids) == len(set(ids)) == 400
        assert _completions_per_request(s.env["INFERBATCH_DATABASE_URL"]) == [1] * 400
        assert "requests of workers not live" in s.log("scheduler")
    finally:
        s.close()


def test_sigterm_drains_then_releases_the_rest_at_once(db_url: str, tmp_path: Path) -> None:
    s = Stack(
        db_url,
        tmp_path,
        sim_args=("--base-latency-s", "3", "--max-concurrency", "8"),
        env={
            "INFERBATCH_DRAIN_SECONDS": "0.5",
            "INFERBATCH_LEASE_SECONDS": "60",
            "INFERBATCH_ENGINE_MAX_IN_FLIGHT": "8",
            "INFERBATCH_ENGINE_CONCURRENCY": "fixed",  # the count held is what is checked
        },
    )
    s.start(spot=1, dedicated=0)
    try:
        client, batch_id = _run(s, 40)
        url = s.env["INFERBATCH_DATABASE_URL"]
        deadline = time.monotonic() + 30
        while True:
            with psycopg.connect(url) as conn:
                running = conn.execute(
                    "SELECT count(*) FROM requests WHERE status = 'running'"
                ).fetchone()
            if running and running[0] == 12:  # 8 in flight and 4 claimed ahead
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert s.stop("worker-spot-0", sig=signal.SIGTERM, timeout=20) == 0
        with psycopg.connect(url) as conn:
            row = conn.execute(
                """SELECT count(*) FILTER (WHERE status = 'running'),
                          count(*) FILTER (WHERE status = 'queued'),
                          sum(interruptions)
                   FROM requests"""
            ).fetchone()
        # released at once (the lease is 60 s): nothing left running; the 8 that had
        # started count an interruption, the 4 claimed ahead do not
        assert row == (0, 40, 8)
        s.spawn("worker-spot-1", ["worker", "--pool", "spot"])
        done = wait_batch(client, batch_id, timeout=120)
        assert done.status == "completed" and done.request_counts
        assert done.request_counts.completed == 40
    finally:
        s.close()


def test_api_without_its_database_answers_503_and_stays_healthy(tmp_path: Path) -> None:
    from inferbatch.engines.local import free_port
    from tests.stack import ADMIN_KEY, wait_http

    s = Stack("postgresql://postgres@127.0.0.1:1/none", tmp_path, engine_url="http://x/v1")
    s.port = free_port()
    s.url = f"http://127.0.0.1:{s.port}"
    try:
        s.spawn("api", ["api", "--port", str(s.port)])
        wait_http(s.url + "/healthz", proc=s.procs["api"])
        assert httpx.get(s.url + "/readyz", timeout=10).status_code == 503
        r = httpx.post(
            s.url + "/v1/batches",
            json={},
            timeout=20,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "service_unavailable"
        assert s.procs["api"].poll() is None
    finally:
        s.close()


def test_sigterm_releases_at_once_what_cannot_finish_in_the_drain(
    db_url: str, tmp_path: Path
) -> None:
    s = Stack(
        db_url,
        tmp_path,
        sim_args=("--base-latency-s", "4", "--max-concurrency", "8"),
        env={
            "INFERBATCH_DRAIN_SECONDS": "1",
            "INFERBATCH_LEASE_SECONDS": "60",
            "INFERBATCH_ENGINE_MAX_IN_FLIGHT": "8",
        },
    )
    s.start(spot=1, dedicated=0)
    try:
        _run(s, 40)
        url = s.env["INFERBATCH_DATABASE_URL"]
        deadline = time.monotonic() + 60
        while True:  # the first wave finished (4 s each): the worker has measured them
            with psycopg.connect(url) as conn:
                done = conn.execute(
                    "SELECT count(*) FROM requests WHERE status = 'completed'"
                ).fetchone()
            if done and done[0] >= 8:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert s.stop("worker-spot-0", sig=signal.SIGTERM, timeout=20) == 0
        # the second wave had just started: ~4 s left, more than the 1 s drain
        assert "would not finish within the 1 s drain period" in s.log("worker-spot-0")
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'running'), sum(interruptions) "
                "FROM requests"
            ).fetchone()
        assert row is not None and row[0] == 0 and row[1] == 8
    finally:
        s.close()
