"""Ingest throughput against raw COPY, and peak memory, for 50,000 and 1,000,000 lines.

For each size a child process (so peak RSS is its own):
1. writes an input file of ~1 KB chat requests to a local blob store;
2. times ``ingest_next``: stream, validate, hash and COPY every line into ``request_inputs``
   and queue it in ``requests``
   (including the duplicate custom_id check) in one transaction;
3. dumps the rows it inserted to a file and times a raw ``COPY FROM`` of those same rows
   into an identical table (same columns, indexes and foreign key): the ceiling;
4. prints lines/s for both, their ratio (goal >= 0.5) and the child's peak RSS (goal
   < 300 MB, flat across sizes).

Usage: python -m bench.ingest [--lines 50000 --lines 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench.common import bench_database, create_batch
from inferbatch.blobstore import LocalBlobStore
from inferbatch.db.connector import open_pool
from inferbatch.scheduler.ingest import ingest_next


async def run_child(n: int, dedup: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, bench_database() as url:
        blobs = LocalBlobStore(Path(tmp))
        batch_id = await create_batch(url, blobs, n, metadata={"dedup": dedup})
        async with open_pool(url, max_size=2) as pool:
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            started = time.perf_counter()
            done = await ingest_next(pool, blobs, max_requests=n, now=lambda: datetime.now(UTC))
            ingest_s = time.perf_counter() - started
            rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            assert done == batch_id
        # the reference: the same rows COPYed into tables of the same shape (and indexes)
        tables = {
            "request_inputs": "id, batch_id, line, custom_id, url, model, body, input_hash",
            "requests": "id, batch_id, priority, batch_created_at, deadline_at",
        }
        with psycopg.connect(url, autocommit=True) as conn:
            status = conn.execute("SELECT status, total_count FROM batches").fetchone()
            assert status == ("in_progress", n), status
            size_row = conn.execute("SELECT bytes FROM files").fetchone()
            size = size_row[0] if size_row else 0
            for table, cols in tables.items():
                conn.execute(f"CREATE TABLE {table}_ref (LIKE {table} INCLUDING ALL)")
                conn.execute(
                    f"ALTER TABLE {table}_ref ADD FOREIGN KEY (batch_id) REFERENCES batches(id)"
                )
                with (
                    (Path(tmp) / f"{table}.copy").open("wb") as f,
                    conn.cursor().copy(
                        f"COPY (SELECT {cols} FROM {table} ORDER BY id) TO STDOUT"
                    ) as copy,
                ):
                    for chunk in copy:
                        f.write(chunk)
            conn.execute("CHECKPOINT")
            started = time.perf_counter()
            with conn.transaction():
                for table, cols in tables.items():
                    with (
                        (Path(tmp) / f"{table}.copy").open("rb") as f,
                        conn.cursor().copy(f"COPY {table}_ref ({cols}) FROM STDIN") as copy,
                    ):
                        while chunk := f.read(1 << 20):
                            copy.write(chunk)
            copy_s = time.perf_counter() - started
        return {
            "lines": n,
            "bytes": size,
            "ingest_lines_per_s": n / ingest_s,
            "copy_lines_per_s": n / copy_s,
            "ratio": copy_s / ingest_s,
            "peak_rss_mb_before": rss_before,
            "peak_rss_mb": rss_after,
        }


def _child(n: int, dedup: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--child", "--lines", str(n), "--dedup", dedup],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, action="append")
    parser.add_argument("--dedup", default="user", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = args.lines or [50_000, 1_000_000]
    if args.child:
        print(json.dumps(asyncio.run(run_child(sizes[0], args.dedup))))
        return
    print(
        f"{'lines':>10} {'MB':>7} {'ingest l/s':>11} {'COPY l/s':>10} {'ratio':>6} "
        f"{'peak RSS MB':>11}"
    )
    ok = True
    for n in sizes:
        r = _child(n, "user")
        print(
            f"{r['lines']:>10} {r['bytes'] / 1e6:>7.0f} {r['ingest_lines_per_s']:>11.0f} "
            f"{r['copy_lines_per_s']:>10.0f} {r['ratio']:>6.2f} {r['peak_rss_mb']:>11.0f}"
        )
        ok = ok and r["ratio"] >= 0.5 and r["peak_rss_mb"] < 300
    print("goals (ratio >= 0.5, peak RSS < 300 MB):", "met" if ok else "NOT met")
    n = sizes[0]
    on, off = _child(n, "user"), _child(n, "off")
    ratio = on["ingest_lines_per_s"] / off["ingest_lines_per_s"]
    print(
        f"dedup on/off ({n} lines): {on['ingest_lines_per_s']:.0f} vs "
        f"{off['ingest_lines_per_s']:.0f} lines/s: ratio {ratio:.2f} (goal >= 0.8)"
    )


if __name__ == "__main__":
    main()
