"""Ingest from object storage against ingest from the local directory, and peak memory.

An S3-protocol server (moto's server mode, a process of its own on this machine) holds
the input file. For each input size (default ~50 MB and ~200 MB of ~1 KB chat requests)
and each store, a child process (so peak RSS is its own):
1. writes the input file to a local blob store and creates a batch over it; for the S3
   store, streams the same bytes into the bucket under the same key (multipart);
2. times ``ingest_next``: stream the file, validate, hash and COPY every line in one
   transaction, reading through ``LocalBlobStore`` or ``S3BlobStore``;
3. reports lines/s and the child's peak RSS.

It prints lines/s from S3 over lines/s from the local directory (goal >= 0.8) and peak
RSS per size (goal: flat, the larger file adding less than 50 MB to the smaller's).

Usage: python -m bench.object_storage [--mb 50 --mb 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from tests.s3server import s3_server

from bench.common import bench_database, create_batch
from inferbatch.blobstore import BlobStore, LocalBlobStore
from inferbatch.blobstore.s3 import S3BlobStore
from inferbatch.db.connector import open_pool
from inferbatch.scheduler.ingest import ingest_next

LINE_BYTES = 1043  # about what bench.common.write_input writes per request


def _copy_to(store: S3BlobStore, local: LocalBlobStore, key: str) -> None:
    with store.open_writer(key) as w:
        for chunk in local.iter_chunks(key, 1 << 20):
            w.write(chunk)


async def run_child(n: int, mode: str, bucket: str) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp, bench_database() as url:
        local = LocalBlobStore(Path(tmp))
        batch_id = await create_batch(url, local, n)
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT blob_key, bytes FROM files").fetchone()
        assert row is not None
        key, size = row
        blobs: BlobStore = local
        if mode == "s3":
            s3 = S3BlobStore(bucket)  # endpoint and keys: the AWS_* environment
            s3.check()
            _copy_to(s3, local, key)
            local.delete(key)  # ingest can only read it from the bucket
            blobs = s3
        async with open_pool(url, max_size=2) as pool:
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            started = time.perf_counter()
            done = await ingest_next(pool, blobs, max_requests=n, now=lambda: datetime.now(UTC))
            ingest_s = time.perf_counter() - started
            rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            assert done == batch_id
        with psycopg.connect(url) as conn:
            status = conn.execute("SELECT status, total_count FROM batches").fetchone()
        assert status == ("in_progress", n), status
        return {
            "mode": mode,
            "lines": n,
            "bytes": size,
            "lines_per_s": n / ingest_s,
            "peak_rss_mb_before": rss_before,
            "peak_rss_mb": rss_after,
        }


def _child(n: int, mode: str, bucket: str, env: dict[str, str]) -> dict[str, float]:
    args = ["--child", mode, "--lines", str(n), "--bucket", bucket]
    out = subprocess.run(
        [sys.executable, "-m", "bench.object_storage", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, action="append", help="input sizes in MB")
    parser.add_argument("--lines", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["local", "s3"], help=argparse.SUPPRESS)
    parser.add_argument("--bucket", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(run_child(args.lines, args.child, args.bucket))))
        return
    sizes = [mb * 1_000_000 // LINE_BYTES for mb in (args.mb or [50, 200])]
    print(f"{'store':>6} {'lines':>8} {'MB':>5} {'lines/s':>9} {'peak RSS MB':>11}")
    with s3_server() as server:
        bucket = server.create_bucket(prefix="")
        peaks: dict[str, list[float]] = {"local": [], "s3": []}
        ratios: list[float] = []
        for i, n in enumerate(sizes):
            rates: dict[str, float] = {}
            # alternate which goes first, so neither gains from the other's warm caches
            for mode in ("local", "s3") if i % 2 == 0 else ("s3", "local"):
                r = _child(n, mode, bucket.name, server.env)
                rates[mode] = r["lines_per_s"]
                peaks[mode].append(r["peak_rss_mb"])
                print(
                    f"{mode:>6} {r['lines']:>8.0f} {r['bytes'] / 1e6:>5.0f} "
                    f"{r['lines_per_s']:>9.0f} {r['peak_rss_mb']:>11.0f}"
                )
            ratios.append(rates["s3"] / rates["local"])
            print(f"{'':>6} S3 over local at {n} lines: {ratios[-1]:.2f}")
    growth = {mode: p[-1] - p[0] for mode, p in peaks.items()}
    ok = ratios[-1] >= 0.8 and all(g < 50 for g in growth.values())
    print(
        f"ingest from S3 over local ({sizes[-1]} lines): {ratios[-1]:.2f} (goal >= 0.8); "
        f"peak RSS growth from the smallest to the largest file: local "
        f"{growth['local']:+.0f} MB, S3 {growth['s3']:+.0f} MB (goal < 50 MB):",
        "met" if ok else "NOT met",
    )


if __name__ == "__main__":
    main()
