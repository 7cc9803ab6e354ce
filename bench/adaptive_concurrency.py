"""Adaptive concurrency: throughput over the best hand-tuned fixed limit, and recovery when
the engine's capacity is halved mid-run.

engine-sim is given a capacity the worker is not told: 32 sequences at once, each slower
the fuller the engine is (``--batch-slowdown 0.5``: a full engine decodes each sequence at
2/3 of the speed of an empty one), at most 32 more waiting, 429 beyond. One worker process
drains a batch with each fixed limit in ``--fixed`` (the hand-tuning: the best of them is the
reference), then with the adaptive limit (ceiling 256). Then the capacity is halved
``--change-after`` seconds into an adaptive run; the reference for the new capacity is a
fixed limit of 16 on the halved engine, measured in the same run.

Figures: adaptive over the best fixed limit (goal >= 0.95); after the halving, the share of
requests answered 429 (goal < 1 %) and the seconds until throughput over a 5 s window is back
to >= 0.9 of the new capacity (goal <= 30 s).

Usage: python -m bench.adaptive_concurrency [--requests 1500] [--fixed 8,16,32,48,64]
"""

from __future__ import annotations

import argparse
import bisect
import json
import threading
import time

import httpx

from bench.common import bench_server
from bench.engine_runs import Run, engine_sim, run_batch, sim_stats

SIM = (
    "--max-concurrency", "32", "--max-queue", "32", "--batch-slowdown", "0.5",
    "--base-latency-s", "0.1", "--prefill-tokens-per-s", "1e9", "--decode-tokens-per-s", "200",
)  # fmt: skip


def lines(n: int, tag: str) -> list[str]:
    out = []
    for i in range(n):
        body = {
            "model": "sim-model",
            "messages": [{"role": "user", "content": f"question {tag} {i}"}],
            "max_tokens": 16,
        }
        out.append(
            json.dumps(
                {"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
                 "body": body}
            )
        )  # fmt: skip
    return out


def _configure(url: str, **fields: object) -> None:
    httpx.post(url + "/sim/config", json=fields, timeout=5).raise_for_status()
    httpx.post(url + "/sim/reset", timeout=5).raise_for_status()


def _recovery(run: Run, change_at: float, capacity: float, window: float = 5.0) -> float | None:
    """Seconds after ``change_at`` until the throughput over ``window`` seconds reaches
    0.9 of ``capacity`` (None: never)."""
    times = run.finished
    t = change_at
    while t + window <= times[-1]:
        done = bisect.bisect_right(times, t + window) - bisect.bisect_right(times, t)
        if done / window >= 0.9 * capacity:
            return t + window - change_at
        t += 0.5
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--fixed", default="8,16,32,48,64")
    parser.add_argument("--change-after", type=float, default=8.0)
    args = parser.parse_args()
    fixed_limits = [int(x) for x in args.fixed.split(",")]
    with bench_server() as server, engine_sim(*SIM) as url:
        engine = url + "/v1"
        results: dict[str, Run] = {}
        rejected: dict[str, int] = {}
        variants = [(f"fixed {k}", "fixed", k) for k in fixed_limits] + [
            ("adaptive", "adaptive", 256)
        ]
        for name, mode, limit in variants:
            _configure(url, max_concurrency=32)
            env = {
                "INFERBATCH_ENGINE_CONCURRENCY": mode,
                "INFERBATCH_ENGINE_MAX_IN_FLIGHT": str(limit),
                "INFERBATCH_MAX_ATTEMPTS": "20",
            }
            results[name] = run_batch(server, engine, lines(args.requests, name), env=env)
            rejected[name] = int(sim_stats(url)["rate_limited"])  # type: ignore[call-overload]
            print(f"{name:>11}: {results[name].rate:6.1f} r/s, {rejected[name]} answered 429")
        best = max((results[f"fixed {k}"] for k in fixed_limits), key=lambda r: r.rate)
        best_name = next(n for n, r in results.items() if r is best)
        ratio = results["adaptive"].rate / best.rate
        print(f"adaptive over the best fixed limit ({best_name}): {ratio:.3f} (goal >= 0.95)")

        # the new capacity: a fixed limit of 16 on the halved engine
        _configure(url, max_concurrency=16)
        env = {"INFERBATCH_ENGINE_CONCURRENCY": "fixed", "INFERBATCH_ENGINE_MAX_IN_FLIGHT": "16"}
        halved = run_batch(server, engine, lines(args.requests // 2, "halved"), env=env)
        capacity = halved.rate
        # adaptive, halved mid-run (the worker takes ~2 s to start: the timer allows for it)
        _configure(url, max_concurrency=32)
        n = args.requests * 2
        timer = threading.Timer(args.change_after + 2.0, _halve, args=(url,))
        timer.start()
        try:
            env = {
                "INFERBATCH_ENGINE_CONCURRENCY": "adaptive",
                "INFERBATCH_ENGINE_MAX_IN_FLIGHT": "256",
                "INFERBATCH_MAX_ATTEMPTS": "20",
            }
            run = run_batch(server, engine, lines(n, "change"), env=env)
        finally:
            timer.cancel()
        refused = int(sim_stats(url)["rate_limited"])  # type: ignore[call-overload]
        change_at = _changed_at[0] - run.started_at if _changed_at else None
    print(f"new capacity (fixed 16 on the halved engine): {capacity:.1f} r/s")
    share = refused / n
    print(f"capacity halved mid-run: {refused} of {n} requests answered 429: {share:.2%} "
          f"(goal < 1%)")  # fmt: skip
    if change_at is None:
        print("the capacity change did not happen during the run: use a larger --requests")
        return
    took = _recovery(run, change_at, capacity)
    if took is None:
        print("throughput never came back to 0.9 of the new capacity (goal within 30 s)")
    else:
        print(f"back to >= 0.9 of the new capacity {took:.1f}s after the change (goal <= 30 s)")


_changed_at: list[float] = []
"""When the engine was halved (Unix seconds), set by the timer thread."""


def _halve(url: str) -> None:
    httpx.post(url + "/sim/config", json={"max_concurrency": 16}, timeout=5).raise_for_status()
    _changed_at.append(time.time())


if __name__ == "__main__":
    main()
