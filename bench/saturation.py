"""Engine saturation: does one worker process keep an engine of known capacity full?

engine-sim is given a fixed capacity: ``--max-concurrency C`` sequences, each request
holding one for ``--base-latency-s L`` seconds (token costs set to zero), so it can serve
at most C / L requests/s. One ``inferbatch worker`` with C requests in flight drains a
queue worth about ``--seconds`` of that capacity; the figure is the measured drain rate
over the capacity (goal >= 0.95). The reference (the capacity) comes from the same engine
configuration in the same run: engine-sim's own peak in-flight count is printed too.

Usage: python -m bench.saturation [--concurrency 64] [--latency 0.25] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import bench_server, fill_queue, fresh_database
from bench.queue import _processes, _wait_count
from inferbatch.blobstore import LocalBlobStore
from inferbatch.engines.local import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    capacity = args.concurrency / args.latency
    n = int(capacity * args.seconds)
    port = free_port()
    sim = [
        sys.executable,
        "-m",
        "inferbatch",
        "engine-sim",
        "--port",
        str(port),
        "--max-concurrency",
        str(args.concurrency),
        "--base-latency-s",
        str(args.latency),
        "--prefill-tokens-per-s",
        "1e12",
        "--decode-tokens-per-s",
        "1e12",
    ]
    with (
        bench_server() as server,
        fresh_database(server) as url,
        _processes([sim], dict(os.environ)),
        tempfile.TemporaryDirectory() as tmp,
    ):
        sim_url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(sim_url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        env = {
            **os.environ,
            "INFERBATCH_DATABASE_URL": url,
            "INFERBATCH_ENGINE_URL": sim_url + "/v1",
            "INFERBATCH_ENGINE_MAX_IN_FLIGHT": str(args.concurrency),
            "INFERBATCH_LOG_LEVEL": "WARNING",
        }
        worker = [sys.executable, "-m", "inferbatch", "worker", "--pool", "spot"]
        with _processes([worker], env):
            _wait_count(url, "SELECT count(*) FROM workers WHERE state = 'running'", 1, 60)
            asyncio.run(fill_queue(url, LocalBlobStore(Path(tmp)), n))
            seconds = _wait_count(
                url, "SELECT count(*) FROM requests WHERE status = 'completed'", n
            )
        stats = httpx.get(sim_url + "/sim/stats").json()
    rate = n / seconds
    print(
        f"engine capacity {capacity:.0f} r/s ({args.concurrency} x {args.latency}s); "
        f"drained {n} requests at {rate:.0f} r/s; engine peak in flight "
        f"{stats['peak_in_flight']}/{args.concurrency}"
    )
    print(f"saturation {rate / capacity:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
