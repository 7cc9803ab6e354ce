"""ETA error: how close is a batch's ``estimated_completion_at`` to when it really finishes?

One deployment (api, scheduler, one spot and one dedicated worker) on engine-sim, where
every request holds an engine slot for ``--latency`` seconds (token costs near zero), runs a
batch of ``--requests`` requests, polled with the official ``openai`` SDK every 0.2 s. When
10%, 25% and 50% of it are done, the estimate it shows is read with the time of the read.
At the end, for each, the figure is the error over the time that was left:
``|estimate - completed_at| / (completed_at - read time)``, the reference being the real
finish measured in the same run (goal <= 0.2 from 10% done, the accuracy the estimate
promises). Starting from nothing measured (the prior of 30 s a request), so the first
minutes of a deployment are part of the figure.

Usage: python -m bench.eta [--requests 6000] [--latency 0.2] [--in-flight 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.helpers import chat_file
from tests.stack import Stack

from bench.common import bench_server, fresh_database

GOAL = 0.2
CHECKPOINTS = (0.10, 0.25, 0.50)
TERMINAL = ("completed", "failed", "expired", "cancelled")


def run(url: str, workdir: Path, requests: int, latency: float, in_flight: int) -> None:
    stack = Stack(
        url,
        workdir,
        sim_args=("--base-latency-s", str(latency), "--max-concurrency", str(4 * in_flight)),
        env={
            "INFERBATCH_ENGINE_MAX_IN_FLIGHT": str(in_flight),
            "INFERBATCH_ENGINE_CONCURRENCY": "fixed",
            "INFERBATCH_MAX_REQUESTS_PER_BATCH": str(requests),
        },
    ).start(spot=1, dedicated=1)
    try:
        client = stack.client()
        f = client.files.create(file=("in.jsonl", chat_file(requests)), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        began = time.time()
        reads: dict[float, tuple[int, float, int]] = {}  # share -> (estimate, read at, done)
        while batch.status not in TERMINAL:
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)
            counts = batch.request_counts
            done = counts.completed + counts.failed if counts else 0
            estimate = (batch.model_extra or {}).get("estimated_completion_at")
            for share in CHECKPOINTS:
                if share not in reads and done >= share * requests and estimate is not None:
                    reads[share] = (int(estimate), time.time(), done)
        finished = batch.completed_at or batch.expired_at or time.time()
        print(
            f"{requests} requests of {latency} s on 2 workers x {in_flight} slots: "
            f"{batch.status} after {finished - began:.1f} s"
        )
        worst = 0.0
        for share in CHECKPOINTS:
            if share not in reads:
                print(f"  {share:.0%} done: never read")
                continue
            estimate, at, done = reads[share]
            left = finished - at
            ratio = abs(estimate - finished) / left if left > 0 else float("inf")
            worst = max(worst, ratio)
            print(
                f"  {share:.0%} done ({done}): estimated {estimate - at:6.1f} s left, "
                f"took {left:6.1f} s: error / time left = {ratio:.3f}"
            )
        print(f"worst error / time left = {worst:.3f} (goal <= {GOAL})")
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args()
    with (
        bench_server() as server,
        fresh_database(server) as url,
        tempfile.TemporaryDirectory(prefix="ibbench-eta-") as tmp,
    ):
        run(url, Path(tmp), args.requests, args.latency, args.in_flight)


if __name__ == "__main__":
    main()
