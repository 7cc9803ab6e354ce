"""Object storage goes away mid-run and comes back: nothing accepted is lost.

The stack keeps file contents in an S3-protocol server (moto, its own process) reached
through a TCP proxy; cutting the proxy is the outage (moto keeps its data in memory, so
it is never stopped). While it is down, uploads and downloads answer 503 in OpenAI's
error shape, ``/readyz`` answers 503 with the reason, ingest and finalize wait (a batch is
neither failed as "file not found" nor finished without its output), and workers keep
running requests. Once it is back every batch completes with every custom_id exactly once.
"""

from __future__ import annotations

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
from tests.s3server import TcpProxy, s3_server
from tests.stack import Stack

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

N_RUNNING = 3000  # ingested before the outage; runs and settles during it
N_WAITING = 500  # uploaded before the outage, created during it: ingest must wait
ENV = {
    "INFERBATCH_LEASE_SECONDS": "2",
    "INFERBATCH_DRAIN_SECONDS": "0.5",
    "INFERBATCH_ENGINE_MAX_IN_FLIGHT": "64",
}
STORAGE_DOWN = {
    "error": {
        "message": "File storage is unavailable; try again shortly.",
        "type": "server_error",
        "param": None,
        "code": "service_unavailable",
    }
}


def _eventually(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)


def _unsettled(db: ChaosDatabase, batch_id: str) -> int:
    with psycopg.connect(db.url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM requests WHERE batch_id = %s "
            "AND status NOT IN ('completed', 'failed', 'cancelled')",
            (batch_id,),
        ).fetchone()
    return row[0] if row else -1


def _every_custom_id_once(client: openai.OpenAI, batch_id: str, prefix: str, n: int) -> None:
    done = wait_batch(client, batch_id, timeout=240)
    assert done.status == "completed", done
    out = parse_jsonl(client.files.content(done.output_file_id).text) if done.output_file_id else []
    err = parse_jsonl(client.files.content(done.error_file_id).text) if done.error_file_id else []
    ids = [r["custom_id"] for r in out + err]
    assert len(ids) == n and set(ids) == {f"{prefix}-{i}" for i in range(n)}
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (n, len(out))


def test_object_storage_down_mid_run_then_back(chaos_db: ChaosDatabase, tmp_path: Path) -> None:
    with (
        s3_server(log=tmp_path / "moto.log") as s3,
        TcpProxy(int(s3.endpoint_url.rsplit(":", 1)[1])) as proxy,
    ):
        bucket = s3.create_bucket(endpoint_url=proxy.url)
        s = Stack(
            chaos_db.url,
            tmp_path,
            sim_args=("--max-concurrency", "128", "--base-latency-s", "0.2"),
            env={**ENV, **bucket.env},
        )
        s.start(spot=2, dedicated=1)
        try:
            client = s.client()
            running_file = client.files.create(
                file=("a.jsonl", chat_file(N_RUNNING, prefix="a")), purpose="batch"
            )
            running = client.batches.create(
                input_file_id=running_file.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            ).id
            _eventually(
                "the first batch is ingested",
                lambda: client.batches.retrieve(running).status != "validating",
            )
            waiting_file = client.files.create(
                file=("b.jsonl", chat_file(N_WAITING, prefix="b")), purpose="batch"
            )

            proxy.cut()

            with pytest.raises(openai.APIStatusError) as upload:
                client.files.create(file=("c.jsonl", chat_file(5, prefix="c")), purpose="batch")
            assert upload.value.status_code == 503
            assert upload.value.response.json() == STORAGE_DOWN
            download = httpx.get(
                f"{s.url}/v1/files/{running_file.id}/content",
                headers={"authorization": f"Bearer {client.api_key}"},
            )
            assert (download.status_code, download.json()) == (503, STORAGE_DOWN)
            ready = httpx.get(s.url + "/readyz")
            assert ready.status_code == 503
            assert "cannot reach" in ready.json()["storage"]
            assert httpx.get(s.url + "/healthz").status_code == 200

            # creating a batch needs only the database; ingesting it needs its file
            waiting = client.batches.create(
                input_file_id=waiting_file.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            ).id
            _eventually(
                "every request of the first batch settles during the outage",
                lambda: _unsettled(chaos_db, running) == 0,
            )
            scheduler_log = lambda: s.log("scheduler")  # noqa: E731
            _eventually(
                "finalize meets the outage",
                lambda: "finalize failed (file storage unavailable" in scheduler_log(),
            )
            _eventually(
                "ingest meets the outage",
                lambda: "ingest failed (file storage unavailable" in scheduler_log(),
            )
            # waiting, not failed: no "file not found", no batch finished without output
            assert client.batches.retrieve(running).status in ("in_progress", "finalizing")
            second = client.batches.retrieve(waiting)
            assert second.status == "validating" and second.errors is None

            proxy.restore()

            _every_custom_id_once(client, running, "a", N_RUNNING)
            _every_custom_id_once(client, waiting, "b", N_WAITING)
            assert httpx.get(s.url + "/readyz").status_code == 200
            with psycopg.connect(chaos_db.url) as conn:
                twice = conn.execute(
                    "SELECT count(*) FROM (SELECT request_id FROM completion_audit "
                    "GROUP BY request_id HAVING count(*) > 1) t"
                ).fetchone()
                settled = conn.execute(
                    "SELECT count(DISTINCT request_id) FROM completion_audit"
                ).fetchone()
            assert twice == (0,)
            assert settled == (N_RUNNING + N_WAITING,)
            # two inputs and two outputs; the refused upload left nothing behind
            assert len(s3.keys(bucket)) == 4
            assert s3.open_uploads(bucket) == []
            for name, proc in s.procs.items():
                assert proc.poll() is None, f"{name} exited during the outage"
        finally:
            s.close()
