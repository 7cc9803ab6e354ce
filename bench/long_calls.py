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

Where the server's WAL can be read from here (``pg_waldump`` beside the server, as with
the embedded one), the window is also dumped: WAL per request by resource manager
(records and full-page images) and by relation. That shows what the total hides: the
queue's tables cost the same per request at either latency, and what grows is the system
catalogs' WAL (``pg_statistic`` and its TOAST, ``pg_class``): autovacuum analysing the
catalogs of the freshly migrated database on its own timer, so a fixed amount per minute
of window, which a longer window holds more of.

It prints both per-request figures for each latency and the ratios long / short of the
WAL outside the system catalogs (of all WAL where it cannot be dumped; the total is
printed either way), of dead versions in ``requests`` and of dead versions in all
tables: goal <= 1.1 for each (with a heartbeat that rewrote every held request row, they
grew with the latency). No scheduler runs: the leader's duties write per tick, not per
request.

Usage: python -m bench.long_calls [--requests 128] [--in-flight 64] [--long 60]
       [--short 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
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
CATALOG = "catalog:"
"""Prefix of a system catalog relation in the by-relation figures."""
OTHER = "database:"
"""Prefix of another database's WAL (a shared server): not the queue's."""
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
    wal_kinds: dict[str, tuple[float, float]]
    """Per resource manager (Heap, Btree, XLOG, ...): (record bytes, full-page image
    bytes) per request, from ``pg_waldump --stats`` over the window; empty when the
    server's WAL cannot be read from here."""
    wal_relations: dict[str, float]
    """WAL bytes per request by the relation of each record's first block (the same
    dump), the largest first; system catalogs prefixed ``catalog:``, records without a
    block ``-``."""

    @property
    def wal_queue(self) -> float | None:
        """WAL bytes per request of the queue's own tables, their indexes and the records
        that touch no block (commits): everything but the system catalogs, where
        autovacuum's analyses land whenever its timer fires (None without a dump)."""
        if not self.wal_relations:
            return None
        return sum(
            b for name, b in self.wal_relations.items() if not name.startswith((CATALOG, OTHER))
        )


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
        stats, relations = _wal_stats(conn, before, after)
        kinds = {k: (rec / n, fpi / n) for k, (rec, fpi) in stats.items()}
    dead = {t: after.obsolete[t] - before.obsolete.get(t, 0) for t in after.obsolete}
    return Cost(
        seconds,
        float(row[0]) / n,
        dead.get("requests", 0) / n,
        dead.get("workers", 0) / n,
        sum(dead.values()) / n,
        kinds,
        {name: b / n for name, b in relations.items()},
    )


def _wal_stats(
    conn: psycopg.Connection[TupleRow], before: _Snapshot, after: _Snapshot
) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """Between the two snapshots, read with the server's own ``pg_waldump`` (a server on
    this machine): (record bytes, full-page image bytes) per resource manager, and bytes
    per relation (of each record's first block; ``-`` for records without one)."""
    try:
        bindir = conn.execute("SELECT setting FROM pg_config WHERE name = 'BINDIR'").fetchone()
        datadir = conn.execute("SHOW data_directory").fetchone()
    except psycopg.Error:
        return {}, {}
    if not bindir or not datadir:
        return {}, {}
    waldump = Path(str(bindir[0])) / "pg_waldump"
    wal = Path(str(datadir[0])) / "pg_wal"
    if not waldump.exists() or not wal.is_dir():
        return {}, {}
    _wait_until(conn, f"SELECT pg_current_wal_flush_lsn() >= '{after.lsn}'::pg_lsn", 10)
    window = [str(waldump), "-p", str(wal), "-s", before.lsn, "-e", after.lsn]
    out = subprocess.run([*window, "--stats"], capture_output=True, text=True).stdout
    kinds: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():
        # Type  N (%)  Record size (%)  FPI size (%)  Combined size (%)
        parts = line.replace("(", " ").replace(")", " ").split()
        if len(parts) == 9 and parts[1].isdigit() and parts[0] != "Total" and int(parts[1]):
            kinds[parts[0]] = (int(parts[3]), int(parts[5]))
    row = conn.execute("SELECT oid::text FROM pg_database WHERE datname = current_database()")
    database = str((row.fetchone() or ("",))[0])
    # a system catalog (with its indexes and TOAST) has an oid below FirstNormalObjectId
    names: dict[str, str] = {
        str(node): str(name) if user else f"{CATALOG}{name}"
        for node, name, user in conn.execute(
            "SELECT pg_relation_filenode(oid)::text, relname, oid >= 16384 FROM pg_class "
            "WHERE pg_relation_filenode(oid) IS NOT NULL"
        ).fetchall()
    }
    relations: dict[str, int] = {}
    records = subprocess.run(window, capture_output=True, text=True).stdout
    for line in records.splitlines():
        size = re.search(r"len \(rec/tot\):\s*\d+/\s*(\d+)", line)
        if not size:
            continue
        block = re.search(r"blkref #0: rel \d+/(\d+)/(\d+)", line)
        if block is None:
            name = "-"
        elif block.group(1) not in (database, "0"):  # another database on a shared server
            name = f"{OTHER}{block.group(1)}"
        else:  # this database's, or a shared catalog (database 0)
            name = names.get(block.group(2), f"{CATALOG}{block.group(2)}")
        relations[name] = relations.get(name, 0) + int(size.group(1))
    return kinds, dict(sorted(relations.items(), key=lambda kv: -kv[1]))


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
    if short.wal_kinds or long.wal_kinds:
        print("WAL per request by resource manager, record + full-page images (pg_waldump):")
        for kind in sorted(set(short.wal_kinds) | set(long.wal_kinds)):
            cells = [
                "{:>7.0f} + {:>7.0f}".format(*c.wal_kinds.get(kind, (0.0, 0.0)))
                for c in (short, long)
            ]
            print(f"  {kind:<12} {args.short:g} s: {cells[0]}   {args.long:g} s: {cells[1]}")
        print("WAL per request by relation (the ten largest in either run):")
        top = list(dict.fromkeys([*list(short.wal_relations)[:10], *list(long.wal_relations)[:10]]))
        for name in top:
            cells = [f"{c.wal_relations.get(name, 0.0):>7.0f}" for c in (short, long)]
            print(f"  {name:<40} {args.short:g} s: {cells[0]}   {args.long:g} s: {cells[1]}")
    total = long.wal_bytes / short.wal_bytes
    ratios = {
        "dead versions in requests": long.dead_requests / short.dead_requests,
        "dead versions in all tables": long.dead_all / short.dead_all,
    }
    if long.wal_queue and short.wal_queue:
        # The system catalogs' WAL is autovacuum analysing them on its own timer: a fixed
        # amount per minute of window, whatever the requests do (see the table above).
        ratios = {"WAL outside the system catalogs": long.wal_queue / short.wal_queue, **ratios}
        print(f"WAL in all, catalogs included: ratio {total:.3f} (no goal: see above)")
    else:
        ratios = {"WAL": total, **ratios}
    print(
        f"ratio {args.long:g} s / {args.short:g} s per request: "
        + ", ".join(f"{name} {r:.3f}" for name, r in ratios.items())
        + f" (goal <= {GOAL} each): "
        + ("PASS" if all(r <= GOAL for r in ratios.values()) else "FAIL")
    )


if __name__ == "__main__":
    main()
