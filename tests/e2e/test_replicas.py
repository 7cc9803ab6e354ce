"""Many replicas on one database: two apis, two schedulers and four workers (two spot, two
dedicated), their pools through PgBouncer in transaction mode and their sessions (leadership,
LISTEN) on the direct URL. The leading scheduler and random workers are SIGKILLed mid-run;
every batch still completes with every custom_id exactly once."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import openai
import psutil
import psycopg
import pytest

from inferbatch.engines.local import free_port
from inferbatch.scheduler.leadership import LOCK_KEY, WHO_LEADS
from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_line, parse_jsonl
from tests.pgbouncer import PgBouncer, pgbouncer
from tests.s3server import s3_server
from tests.stack import ADMIN_KEY, Stack, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

T = TypeVar("T")

BATCHES = 6
LINES = 200
POOL_SIZE = 6
"""Server connections PgBouncer keeps for the test database: fewer than the processes."""


@pytest.fixture
def blob_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Where every replica keeps file contents: one bucket of a real S3-protocol server
    (tests/s3server.py). The one place to change; a shared directory instead:
    ``yield {"INFERBATCH_BLOB_DIR": str(tmp_path / "blobs")}``."""
    with s3_server(log=tmp_path / "s3.log") as s3:
        yield s3.create_bucket().env


@pytest.fixture
def bouncer(server_url: str) -> Iterator[PgBouncer]:
    with pgbouncer(server_url, pool_size=POOL_SIZE) as b:
        yield b


def _leader_backend(db_url: str) -> int | None:
    """The backend pid holding the scheduler lock (pg_locks), if any."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(WHO_LEADS, (LOCK_KEY,)).fetchall()
    assert len(rows) <= 1
    return int(rows[0][0]) if rows else None


def _leading_scheduler(stack: Stack, names: list[str], db_url: str) -> str | None:
    """The live scheduler whose leadership the lock holder is: each logs the backend pid
    of its lock connection when it takes the lead."""
    pid = _leader_backend(db_url)
    if pid is None:
        return None
    line = f"became scheduler leader (database backend pid {pid})"
    leaders = [n for n in names if stack.procs[n].poll() is None and line in stack.log(n)]
    assert len(leaders) <= 1, leaders
    return leaders[0] if leaders else None


def _wait_for(what: str, check: Callable[[], T | None], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def _finished(client: openai.OpenAI, batch_ids: list[str]) -> int:
    """Requests of these batches completed or failed, as the api reports them."""
    done = 0
    for batch_id in batch_ids:
        counts = client.batches.retrieve(batch_id).request_counts
        done += counts.completed + counts.failed if counts else 0
    return done


def _connected_to(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP connection to 127.0.0.1:``port``."""
    return any(c.raddr and c.raddr.port == port for c in psutil.Process(pid).net_connections("tcp"))


def _input(batch: int) -> bytes:
    # distinct bodies per batch: deduplication must not finish one batch from another
    lines = (chat_line(f"b{batch}-{i}", f"batch {batch} line {i}") for i in range(LINES))
    return ("\n".join(lines) + "\n").encode()


def test_replicas_behind_pgbouncer_survive_sigkills_of_the_leader_and_workers(
    db_url: str, bouncer: PgBouncer, blob_env: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(7)
    stack = Stack(
        bouncer.pooled(db_url),
        tmp_path,
        sim_args=("--base-latency-s", "0.3", "--max-concurrency", "64"),
        env={
            "INFERBATCH_DATABASE_SESSION_URL": db_url,
            "INFERBATCH_DATABASE_POOL_MODE": "transaction",
            "INFERBATCH_LEASE_SECONDS": "2",
            "INFERBATCH_ENGINE_MAX_IN_FLIGHT": "6",
            **blob_env,
        },
    )
    try:
        stack.start(spot=2, dedicated=2, scheduler=False)
        second_port = free_port()
        stack.spawn("api-1", ["api", "--port", str(second_port)])
        second_url = f"http://127.0.0.1:{second_port}"
        wait_http(second_url + "/readyz", proc=stack.procs["api-1"])
        schedulers = ["scheduler-0", "scheduler-1"]
        for name in schedulers:
            stack.spawn(name, ["scheduler"])
        clients = [
            stack.client(),
            openai.OpenAI(base_url=second_url + "/v1", api_key=ADMIN_KEY, max_retries=0),
        ]
        first = _wait_for(
            "a scheduler leads", lambda: _leading_scheduler(stack, schedulers, db_url), 60
        )

        # upload through one api and create the batch through the other
        batch_ids = []
        for b in range(BATCHES):
            upload, create = clients[b % 2], clients[(b + 1) % 2]
            f = upload.files.create(file=(f"in-{b}.jsonl", _input(b)), purpose="batch")
            batch = create.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            batch_ids.append(batch.id)
        total = BATCHES * LINES

        def finished() -> int:
            return _finished(clients[0], batch_ids)

        _wait_for("work under way", lambda: finished() >= total // 10, 120)
        assert stack.stop(first, sig=signal.SIGKILL) == -signal.SIGKILL
        survivor = next(n for n in schedulers if n != first)
        assert (
            _wait_for(
                "the other scheduler leads",
                lambda: _leading_scheduler(stack, [survivor], db_url),
                30,
            )
            == survivor
        )
        stack.spawn("scheduler-2", ["scheduler"])  # a replacement follows

        # kill random workers while they hold leases, starting a replacement each time
        workers = [n for n in stack.procs if n.startswith("worker-")]
        for round_ in range(3):
            target = finished() + total // 20
            _wait_for("more work done", lambda t=target: finished() >= t, 120)
            assert finished() < total, "the run ended before this kill: nothing was proved"
            victim = rng.choice(workers)
            assert stack.stop(victim, sig=signal.SIGKILL) == -signal.SIGKILL
            workers.remove(victim)
            pool = "spot" if "-spot-" in victim else "dedicated"
            replacement = f"worker-{pool}-r{round_}"
            stack.spawn(replacement, ["worker", "--pool", pool])
            workers.append(replacement)

        # the replacement scheduler follows: leadership stays with the survivor
        assert _leading_scheduler(stack, [survivor, "scheduler-2"], db_url) == survivor

        outputs: list[dict[str, object]] = []
        for b, batch_id in enumerate(batch_ids):
            done = wait_batch(clients[b % 2], batch_id, timeout=240)
            assert done.status == "completed", (batch_id, done.status)
            assert done.error_file_id is None
            assert done.output_file_id is not None
            lines = parse_jsonl(clients[(b + 1) % 2].files.content(done.output_file_id).text)
            assert sorted(str(line["custom_id"]) for line in lines) == sorted(
                f"b{b}-{i}" for i in range(LINES)
            )
            outputs.extend(lines)
        ids = [line["custom_id"] for line in outputs]
        assert len(ids) == len(set(ids)) == total  # every custom_id once, none twice

        # every replica's pool went through PgBouncer, and it served more clients than it
        # held server connections
        for name, proc in stack.procs.items():
            if name != "engine-sim":
                assert _connected_to(proc.pid, bouncer.port), name
        dbname = urlsplit(db_url).path.lstrip("/")
        assert len([c for c in bouncer.show("CLIENTS") if c["database"] == dbname]) > POOL_SIZE
        pools = [p for p in bouncer.show("POOLS") if p["database"] == dbname]
        assert [p["pool_mode"] for p in pools] == ["transaction"]
    finally:
        stack.close()
