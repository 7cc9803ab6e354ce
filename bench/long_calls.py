"""Long engine calls: does what the queue writes per request stay flat as calls get longer?

A worker's liveness is one heartbeat on its own ``workers`` row, so the database work a
request costs should not depend on how long its engine call takes. This script measures it:
for each engine latency (``--short``, default 1 s, and ``--long``, default 60 s), in a
fresh database on the same server,

1. N requests of about 1 KB are queued (one batch, ingested) while no worker runs;
2. a ``CHECKPOINT`` is taken, so that both drains start with the same full-page-write
   state and no timed checkpoint falls inside either (each is shorter than the server's
   ``checkpoint_timeout``, printed);
3. engine-sim serves every request in exactly the latency (``--base-latency-s``, token
   costs set to zero) with as many slots as the worker keeps in flight, so concurrency is
   the same in both runs and only the call length differs;
4. one ``inferbatch worker`` (``INFERBATCH_LEASE_SECONDS=30``: it beats every 10 s, so a
   60 s call spans six beats) starts, drains the queue and is stopped (SIGTERM) once no
   request is queued or running; the window closes when its sessions have gone (a
   session's table statistics are complete once it has ended).

Counted over the window, from the worker's start to its exit, each divided by N:

- WAL bytes: ``pg_wal_lsn_diff`` of ``pg_current_wal_insert_lsn()`` at both ends (every
  record inserted, written out yet or not; the server is the benchmark's own, so this is
  the drain's WAL plus the little that background processes write);
- dead row versions: the ``n_tup_upd + n_tup_del`` delta of ``pg_stat_user_tables`` (each
  update, HOT or not, and each delete leaves one obsolete row version for vacuum), for
  ``requests``, for ``workers`` (where the beat lands now) and for all tables.

It prints both per-request figures for each latency and the ratios long / short of WAL,
of dead versions in ``requests`` and of dead versions in all tables: goal <= 1.1 for each
(with a heartbeat that rewrote every held request row, they grew with the latency). No
scheduler runs: the leader's duties write per tick, not per request.

Usage: python -m bench.long_calls [--requests 128] [--in-flight 64] [--long 60]
       [--short 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from psycopg.rows import TupleRow

from bench.common import bench_server, fill_queue, fresh_database
from bench.queue import COMPLETED, UNFINISHED, WORKER, _processes, _wait_drained, _worker_env
from inferbatch.blobstore import LocalBlobStore
from inferbatch.engines.local import free_port

GOAL = 1.1
"""Largest ratio long / short allowed for each per-request figure."""
LEASE_SECONDS = 30
"""The workers' lease: a beat every 10 s, so a long call spans several."""

OBSOLETE = """
SELECT relname, n_tup_upd + n_tup_del FROM pg_stat_user_tables
"""
"""Per table: row versions made obsolete (updated or deleted)."""
TABLES = "SELECT relname FROM pg_stat_user_tables ORDER BY relname"
ALONE = """
SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid())
"""
"""True once every other session on the database has ended (its statistics flushed)."""


@dataclass(frozen=True)
class Cost:
    """What one drain of ``n`` requests wrote, per request."""

    seconds: float
    """From the worker's start until no request was queued or running."""
    wal_bytes: float
    dead_requests: float
    """Obsolete row versions left in ``requests``."""
    dead_workers: float
    """Obsolete row versions left in ``workers`` (heartbeats)."""
    dead_all: float
    """Obsolete row versions left in all user tables."""


@dataclass(frozen=True)
class _Snapshot:
    lsn: str
    obsolete: dict[str, int]


def _snapshot(conn: psycopg.Connection[TupleRow]) -> _Snapshot:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    rows = conn.execute(OBSOLETE).fetchall()
    return _Snapshot(str(row[0]), {name: int(dead) for name, dead in rows})


def _wait_until(conn: psycopg.Connection[TupleRow], sql: str, timeout: float) -> None:
    """Poll ``sql`` (one boolean) every 50 ms until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(sql).fetchone()
        if row and row[0]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout}s: {sql}")
        time.sleep(0.05)


@contextlib.contextmanager
def _engine_sim(latency: float, slots: int) -> Iterator[str]:
    """engine-sim answering every request in ``latency`` seconds, ``slots`` at a time."""
    port = free_port()
    cmd = [
        *(sys.executable, "-m", "inferbatch", "engine-sim", "--port", str(port)),
        *("--max-concurrency", str(slots), "--base-latency-s", str(latency)),
        *("--prefill-tokens-per-s", "1e12", "--decode-tokens-per-s", "1e12"),
    ]
    with _processes([cmd], dict(os.environ)):
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield base + "/v1"


def drain(server: str, n: int, in_flight: int, latency: float) -> Cost:
    """One worker drains ``n`` queued requests against an engine of fixed ``latency``."""
    with (
        fresh_database(server) as url,
        _engine_sim(latency, in_flight) as engine,
        tempfile.TemporaryDirectory() as tmp,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        asyncio.run(fill_queue(url, LocalBlobStore(Path(tmp)), n))
        _wait_until(conn, ALONE, 30)
        _wait_until(
            conn,
            f"SELECT n_tup_ins >= {n} FROM pg_stat_user_tables WHERE relname = 'requests'",
            30,
        )
        tables = [r[0] for r in conn.execute(TABLES).fetchall()]
        for table in tables:
            conn.execute(f'ALTER TABLE "{table}" SET (autovacuum_enabled = off)')
        conn.execute("VACUUM (ANALYZE)")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            print("(no CHECKPOINT privilege: a timed checkpoint may add full-page writes)")
        before = _snapshot(conn)
        env = {
            **_worker_env(url, engine),
            "INFERBATCH_ENGINE_MAX_IN_FLIGHT": str(in_flight),
            "INFERBATCH_LEASE_SECONDS": str(LEASE_SECONDS),
        }
        with _processes([WORKER], env):
            seconds = _wait_drained(url, UNFINISHED, COMPLETED, n)
        _wait_until(conn, ALONE, 60)
        for table in tables:
            conn.execute(f'VACUUM "{table}"')
        after = _snapshot(conn)
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (after.lsn, before.lsn)
        ).fetchone()
        assert row is not None
    dead = {t: after.obsolete[t] - before.obsolete.get(t, 0) for t in after.obsolete}
    return Cost(
        seconds,
        float(row[0]) / n,
        dead.get("requests", 0) / n,
        dead.get("workers", 0) / n,
        sum(dead.values()) / n,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=128, help="requests per drain (N)")
    parser.add_argument(
        "--in-flight", type=int, default=64, help="the worker's in-flight limit (engine slots)"
    )
    parser.add_argument("--long", type=float, default=60.0, help="long engine latency, s")
    parser.add_argument("--short", type=float, default=1.0, help="short engine latency, s")
    args = parser.parse_args()
    n, slots = args.requests, args.in_flight

    costs: dict[float, Cost] = {}
    with bench_server() as server:
        with psycopg.connect(server) as conn:
            row = conn.execute("SHOW checkpoint_timeout").fetchone()
        print(
            f"{n} requests, 1 worker with {slots} in flight, lease {LEASE_SECONDS} s, "
            f"checkpoint_timeout {row[0] if row else '?'}",
            flush=True,
        )
        print(
            f"{'latency':>8} {'drain s':>8} {'WAL B/r':>8} {'dead/r requests':>15} "
            f"{'dead/r workers':>14} {'dead/r all':>10}",
            flush=True,
        )
        for latency in (args.short, args.long):
            c = costs[latency] = drain(server, n, slots, latency)
            print(
                f"{latency:>6g} s {c.seconds:>8.1f} {c.wal_bytes:>8.0f} "
                f"{c.dead_requests:>15.3f} {c.dead_workers:>14.3f} {c.dead_all:>10.3f}",
                flush=True,
            )
    short, long = costs[args.short], costs[args.long]
    ratios = {
        "WAL": long.wal_bytes / short.wal_bytes,
        "dead versions in requests": long.dead_requests / short.dead_requests,
        "dead versions in all tables": long.dead_all / short.dead_all,
    }
    print(
        f"ratio {args.long:g} s / {args.short:g} s per request: "
        + ", ".join(f"{name} {r:.3f}" for name, r in ratios.items())
        + f" (goal <= {GOAL} each): "
        + ("PASS" if all(r <= GOAL for r in ratios.values()) else "FAIL")
    )


if __name__ == "__main__":
    main()
