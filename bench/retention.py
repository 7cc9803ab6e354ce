"""Retention beside live work: does pruning a large finished history slow the queue?

In two fresh databases on the same server, each holding the same finished history of
``--history`` requests (~1 KB bodies and results, in batches of 10,000 whose retention is
over), two no-op workers drain ``--requests`` newly queued requests:

- reference: nothing prunes;
- pruning: the retention duty's bounded steps (:func:`inferbatch.db.retention.prune_step`,
  one transaction of 5,000 requests each, as the leader runs them) delete the history
  for the whole drain.

Each runs ``--repeat`` times, alternated; the best of each counts. Prints the drain rates
and their ratio (pruning / reference; goal >= 0.9), how fast the
history went (requests/s) and what the tables hold afterwards: the queue table's size
before the history is pruned and after a plain VACUUM, and how it grew when a second
drain of the same size ran after the prune (the space pruning freed is reused: the queue
does not bloat).

Usage: python -m bench.retention [--history 300000] [--requests 30000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from bench.common import bench_server, fill_queue, fresh_database
from bench.queue import COMPLETED, UNFINISHED, WORKER, _processes, _wait_count, _worker_env
from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import retention

BATCH = 10_000

HISTORY = """
INSERT INTO users (id, name) VALUES ('hist', 'history') ON CONFLICT DO NOTHING;
INSERT INTO batches (id, owner_id, input_file_id, endpoint, completion_window, deadline_at,
    status, completed_at, total_count, completed_count, requests_expire_at)
SELECT 'hist_' || b, 'hist', 'file-hist', '/v1/chat/completions', '24h',
    now() - interval '30 days', 'completed', now() - interval '31 days', %(batch)s, %(batch)s,
    now() - interval '1 day'
FROM generate_series(1, %(batches)s) b;
INSERT INTO request_inputs (batch_id, line, custom_id, url, model, body, input_hash)
SELECT 'hist_' || (1 + (g - 1) / %(batch)s), 1 + (g - 1) %% %(batch)s, 'h-' || g,
    '/v1/chat/completions', 'llama-3.1-8b-instruct',
    '{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"'
        || repeat('history ', 110) || g || '"}],"max_tokens":128}',
    sha256(g::text::bytea)
FROM generate_series(1, %(n)s) g;
INSERT INTO requests (id, batch_id, status, priority, deadline_at, batch_created_at,
    attempts)
SELECT id, batch_id, 'completed', 1, now() - interval '30 days', now() - interval '31 days', 1
FROM request_inputs WHERE batch_id LIKE 'hist_%%';
INSERT INTO request_results (request_id, batch_id, status, pool, attempt, worker_id,
    started_at, finished_at, response_status, response_request_id, response_body,
    prompt_tokens, completion_tokens)
SELECT id, batch_id, 'completed', 'spot', 1, 'w', now() - interval '31 days',
    now() - interval '31 days', 200, 'r-' || id,
    '{"object":"chat.completion","choices":[{"message":{"content":"'
        || repeat('answer ', 100) || '"}}]}', 200, 100
FROM request_inputs WHERE batch_id LIKE 'hist_%%';
"""


def _history(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        params = {"n": n, "batch": BATCH, "batches": -(-n // BATCH)}
        for statement in HISTORY.split(";\n"):
            if statement.strip():
                conn.execute(statement, params)
        conn.execute("VACUUM ANALYZE")


def _size(url: str, table: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_table_size(%s)", (table,)).fetchone()
    return int(row[0]) if row else 0


class _Pruner(threading.Thread):
    """Runs retention steps back to back (as the leader's duty does) until stopped or
    nothing is due; counts what it deleted."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.deleted = 0
        self.seconds = 0.0
        self.done = False

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.url, row_factory=dict_row)
        started = time.perf_counter()
        try:
            while not self.stop.is_set():
                step = await retention.prune_step(conn, datetime.now(UTC))
                await conn.commit()
                if step.batch_id is None:
                    self.done = True
                    break
                self.deleted += step.requests
        finally:
            self.seconds = time.perf_counter() - started
            await conn.close()


def _drain(url: str, n: int, prefix: str) -> float:
    """Requests/s two no-op workers take to drain ``n`` newly queued requests."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        _processes([WORKER] * 2, _worker_env(url, "noop://")),
    ):
        _wait_count(url, "SELECT count(*) FROM workers WHERE state = 'running'", 2, 60)
        asyncio.run(fill_queue(url, LocalBlobStore(Path(tmp)), n, prefix))
        started = time.perf_counter()
        _wait_count(url, f"SELECT (NOT EXISTS ({UNFINISHED}))::int", 1)
        return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--history", type=int, default=300_000)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    references, prunings = [], []
    with bench_server() as server:
        for _ in range(args.repeat):  # alternated, best of each: the machine is shared
            with fresh_database(server) as url:
                _history(url, args.history)
                references.append(_drain(url, args.requests, "ref"))
            with fresh_database(server) as url:
                _history(url, args.history)
                queue_before = _size(url, "requests")
                pruner = _Pruner(url)
                pruner.start()
                prunings.append(_drain(url, args.requests, "live"))
                pruner.join()
                completed = _count_completed(url)
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("VACUUM requests, request_inputs, request_results")
                queue_vacuumed = _size(url, "requests")
                _drain(url, args.requests, "again")
                queue_after = _size(url, "requests")
    reference, pruning = max(references), max(prunings)
    print(f"history {args.history} finished requests, drain {args.requests} queued")
    print(f"drain, nothing pruning:      {reference:9.0f} requests/s")
    print(f"drain, history pruning:      {pruning:9.0f} requests/s")
    print(f"ratio pruning / reference:   {pruning / reference:9.2f}  (goal >= 0.9)")
    print(
        f"pruned {pruner.deleted} requests in {pruner.seconds:.1f} s "
        f"({pruner.deleted / max(pruner.seconds, 1e-9):.0f} requests/s), all due gone: "
        f"{pruner.done}; live requests completed: {completed}"
    )
    print(
        f"queue table: {queue_before / 2**20:.1f} MiB with the history, "
        f"{queue_vacuumed / 2**20:.1f} MiB after the prune and a VACUUM, "
        f"{queue_after / 2**20:.1f} MiB after another drain of {args.requests} "
        f"(growth {queue_after / max(queue_vacuumed, 1):.2f}x)"
    )


def _count_completed(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(COMPLETED).fetchone()
    return int(row[0]) if row else 0


if __name__ == "__main__":
    main()
