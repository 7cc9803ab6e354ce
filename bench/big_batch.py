"""A 1,000,000-line batch through the Uploads API, with flat memory: peak RSS against 100,000.

For each size, the reference (``--lines`` / 10, 100,000 by default) first, then
``--lines`` (1,000,000), in a fresh database and a fresh blob directory, with the real
``inferbatch api`` and ``inferbatch scheduler`` as processes of their own (so that the
peak RSS of each, VmHWM, is that of this size alone):

1. writes an input file of distinct ~300-byte chat requests;
2. sends it through the Uploads API with the official SDK: ``uploads.create``, one
   ``uploads.parts.create`` per ``--part-mb`` of the file, ``uploads.complete`` with its
   md5; the api's peak RSS is read before, after the parts and after the complete;
3. creates a batch over the file and times the scheduler's ingest (stream, validate, hash
   and COPY every line, then queue it, in one transaction) until the batch is
   ``in_progress`` with every line counted; the scheduler's peak RSS is read before and
   after;
4. creates a second batch over the same file, sent again: deduplication finds every line
   identical to one of the first batch, still queued, and makes it wait for it; the
   scheduler's peak RSS is read after that ingest too.

It prints the figures of both sizes and the ratios of the larger size's peak RSS over the
reference's: the scheduler's through both ingests (goal <= 1.5: ingest streams the file,
and the matches of deduplication) and the api's through the parts and the complete (goal
<= 1.5: parts stream to the blob store, complete composes them there); and the ratio of
the second ingest's time per line (goal <= 1.5: deduplication costs each line the same
whatever the size of the batch). The other times are printed for information; they have
no goal.

Usage: python -m bench.big_batch [--lines 1000000] [--part-mb 64]
Quick check: python -m bench.big_batch --lines 100000
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psycopg

from bench.common import WORDS, bench_server, fresh_database
from inferbatch.engines.local import free_port

ADMIN_KEY = "sk-bench-big-batch-" + secrets.token_hex(8)
MiB = 1024 * 1024


@dataclass
class Figures:
    lines: int
    bytes: int
    upload_s: float
    complete_s: float
    ingest_s: float
    again_s: float
    api_idle_mb: float
    api_parts_mb: float
    api_complete_mb: float
    scheduler_idle_mb: float
    scheduler_ingest_mb: float
    scheduler_again_mb: float


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def write_input(path: Path, n: int) -> str:
    """``n`` distinct chat requests of ~300 bytes; returns the file's md5."""
    md5 = hashlib.md5(usedforsecurity=False)
    filler = " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(40))[:180]
    with path.open("wb") as f:
        for start in range(0, n, 10_000):
            chunk = "".join(
                json.dumps(
                    {
                        "custom_id": f"request-{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "model": "llama-3.1-8b-instruct",
                            "messages": [{"role": "user", "content": f"{i} {filler}"}],
                            "max_tokens": 16,
                        },
                    },
                    separators=(",", ":"),
                )
                + "\n"
                for i in range(start, min(n, start + 10_000))
            ).encode()
            md5.update(chunk)
            f.write(chunk)
    return md5.hexdigest()


@dataclass(frozen=True)
class Stack:
    base: str
    api_pid: int
    scheduler_pid: int


@contextlib.contextmanager
def processes(url: str, blob_dir: Path, max_requests: int, logs: Path) -> Iterator[Stack]:
    """The api and the scheduler on ``url`` and ``blob_dir``, stopped afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "INFERBATCH_DATABASE_URL": url,
        "INFERBATCH_BLOB_DIR": str(blob_dir),
        "INFERBATCH_API_KEY": ADMIN_KEY,
        "INFERBATCH_ENGINE_URL": "noop://",
        "INFERBATCH_MAX_REQUESTS_PER_BATCH": str(max_requests),
        "INFERBATCH_SCHEDULER_TICK_SECONDS": "0.2",
        "INFERBATCH_LOG_LEVEL": "WARNING",
    }
    commands = {
        "api": [sys.executable, "-m", "inferbatch", "api", "--port", str(port)],
        "scheduler": [sys.executable, "-m", "inferbatch", "scheduler"],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, cmd in commands.items():
            with (logs / f"{name}.log").open("ab") as log:
                procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if procs["api"].poll() is not None:
                raise RuntimeError(f"the api exited: see {logs / 'api.log'}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise TimeoutError("the api did not become ready")
        yield Stack(base, procs["api"].pid, procs["scheduler"].pid)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(server: str, n: int, max_requests: int, part_bytes: int) -> Figures:
    with (
        tempfile.TemporaryDirectory() as tmp,
        fresh_database(server) as url,
        processes(url, Path(tmp) / "blobs", max_requests, Path(tmp)) as stack,
    ):
        path = Path(tmp) / "input.jsonl"
        md5 = write_input(path, n)
        size = path.stat().st_size
        client = openai.OpenAI(base_url=stack.base + "/v1", api_key=ADMIN_KEY, timeout=600)
        api_idle = peak_rss_mb(stack.api_pid)
        scheduler_idle = peak_rss_mb(stack.scheduler_pid)

        started = time.perf_counter()
        upload = client.uploads.create(
            bytes=size, filename="input.jsonl", mime_type="application/jsonl", purpose="batch"
        )
        part_ids = []
        with path.open("rb") as f:
            while data := f.read(part_bytes):
                part_ids.append(client.uploads.parts.create(upload_id=upload.id, data=data).id)
                del data
        upload_s = time.perf_counter() - started
        api_parts = peak_rss_mb(stack.api_pid)

        started = time.perf_counter()
        done = client.uploads.complete(upload_id=upload.id, part_ids=part_ids, md5=md5)
        complete_s = time.perf_counter() - started
        api_complete = peak_rss_mb(stack.api_pid)
        assert done.status == "completed" and done.file is not None and done.file.bytes == size

        ingest_s = ingested(client, url, done.file.id, n, "queued")
        scheduler_ingest = peak_rss_mb(stack.scheduler_pid)
        again_s = ingested(client, url, done.file.id, n, "waiting")
        scheduler_again = peak_rss_mb(stack.scheduler_pid)
    return Figures(
        n,
        size,
        upload_s,
        complete_s,
        ingest_s,
        again_s,
        api_idle,
        api_parts,
        api_complete,
        scheduler_idle,
        scheduler_ingest,
        scheduler_again,
    )


def ingested(client: openai.OpenAI, url: str, file_id: str, n: int, status: str) -> float:
    """Seconds from creating a batch over ``file_id`` until it is ingested: in_progress,
    ``n`` requests, each in ``status``."""
    started = time.perf_counter()
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT status, total_count, errors::text FROM batches WHERE id = %s",
                (batch.id,),
            ).fetchone()
            assert row is not None
            if row[0] != "validating":
                break
            if time.perf_counter() - started > 1800:
                raise TimeoutError("the batch was not ingested in 30 minutes")
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        assert (row[0], row[1]) == ("in_progress", n), row
        counted = conn.execute(
            "SELECT count(*) FROM requests WHERE batch_id = %s AND status = %s", (batch.id, status)
        ).fetchone()
        assert counted == (n,), (counted, status)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="the large batch")
    parser.add_argument("--part-mb", type=int, default=64, help="MiB per upload part")
    args = parser.parse_args()
    sizes = [max(1, args.lines // 10), args.lines]
    results: list[Figures] = []
    with bench_server() as server:
        for n in sizes:
            started = time.perf_counter()
            results.append(run(server, n, args.lines, args.part_mb * MiB))
            print(f"{n:,} lines: {time.perf_counter() - started:.0f} s", flush=True)
    print(
        f"\n{'lines':>10} {'MB':>5} {'upload s':>8} {'complete s':>10} {'ingest s':>8} "
        f"{'lines/s':>7} {'again s':>7} | peak RSS MiB: {'api idle':>8} {'parts':>5} "
        f"{'complete':>8} {'sched idle':>10} {'ingest':>6} {'again':>5}"
    )
    for r in results:
        print(
            f"{r.lines:>10,} {r.bytes / 1e6:>5.0f} {r.upload_s:>8.1f} {r.complete_s:>10.1f} "
            f"{r.ingest_s:>8.1f} {r.lines / r.ingest_s:>7.0f} {r.again_s:>7.1f} | "
            f"{'':>13} {r.api_idle_mb:>8.0f} {r.api_parts_mb:>5.0f} {r.api_complete_mb:>8.0f} "
            f"{r.scheduler_idle_mb:>10.0f} {r.scheduler_ingest_mb:>6.0f} "
            f"{r.scheduler_again_mb:>5.0f}"
        )
    ref, big = results
    ref_us, big_us = (r.again_s / r.lines * 1e6 for r in (ref, big))
    print(
        f"\nthe file sent again, time per line: {ref_us:.0f} us at {ref.lines:,} lines, "
        f"{big_us:.0f} us at {big.lines:,}"
    )
    ratios = {
        "scheduler peak RSS through ingest": big.scheduler_ingest_mb / ref.scheduler_ingest_mb,
        "scheduler peak RSS, the file sent again": big.scheduler_again_mb / ref.scheduler_again_mb,
        "api peak RSS through the parts": big.api_parts_mb / ref.api_parts_mb,
        "api peak RSS through complete": big.api_complete_mb / ref.api_complete_mb,
        "time per line, the file sent again": big_us / ref_us,
    }
    print(f"\n{big.lines:,} lines over {ref.lines:,} (goal <= 1.5 each):")
    failed = 0
    for name, ratio in ratios.items():
        ok = ratio <= 1.5
        failed += not ok
        print(f"  {name:<40} {ratio:5.2f}  {'PASS' if ok else 'FAIL'}")
    print(f"{failed} figure(s) missed their goal" if failed else "all figures met their goal")


if __name__ == "__main__":
    main()
