"""Same engine, two drivers: batch throughput over the engine driven directly.

The local llama.cpp engine of ``inferbatch up`` (SmolLM2-135M) serves the same 100 chat
requests (``max_tokens`` 16, temperature 0) two ways, alternating A-B-B-A (``--rounds``
times) so that drift of a shared machine falls on both: as one batch through a real
worker process and the queue, and sent directly by as many concurrent clients as the
worker keeps in flight (its ``max_in_flight``, 4 as ``inferbatch up`` configures it). The
figure is the batch's requests per second over the direct clients'. What separates them
is the queue's own cost: claims, result writes and the worker's CPU, which on a small
machine competes with the engine. Goal: >= 0.95.

Usage: python -m bench.same_engine [--requests 100] [--in-flight 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import bench_server
from bench.engine_runs import run_batch
from inferbatch.engines.local import CHAT_MODEL, _wait_ready, start_chat

TOPICS = ("rivers", "clocks", "bread", "trains", "snow", "maps", "bees", "glass", "salt", "kites")


def bodies(n: int, tag: int = 0) -> list[dict[str, object]]:
    """``n`` distinct chat requests. Every run sends the same ones: at temperature 0 the
    work of a request (its completion length) depends on its text, so runs with other texts
    would not compare."""
    return [
        {
            "model": CHAT_MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": f"Write one short sentence about {TOPICS[i % len(TOPICS)]} "
                    f"(note {tag}-{i}).",
                }
            ],
            "max_tokens": 16,
            "temperature": 0,
        }
        for i in range(n)
    ]


async def direct(url: str, requests: list[dict[str, object]], clients: int) -> float:
    """Requests per second from ``clients`` concurrent clients sending ``requests``."""
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for body in requests:
        queue.put_nowait(body)

    async def client(http: httpx.AsyncClient) -> None:
        while True:
            try:
                body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            resp = await http.post(url + "/chat/completions", json=body)
            resp.raise_for_status()

    async with httpx.AsyncClient(timeout=600) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return len(requests) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"batch": [], "direct": []}
    with tempfile.TemporaryDirectory() as tmp, bench_server() as server:
        engine = start_chat(Path(tmp), parallel=args.in_flight)
        try:
            _wait_ready(engine, 120)
            asyncio.run(direct(engine.url, bodies(4, -1), 2))  # warm up
            env = {"INFERBATCH_ENGINE_MAX_IN_FLIGHT": str(args.in_flight)}
            order = ("direct", "batch", "batch", "direct") * args.rounds
            for kind in order:
                requests = bodies(args.requests)
                if kind == "direct":
                    rates["direct"].append(
                        asyncio.run(direct(engine.url, requests, args.in_flight))
                    )
                else:
                    lines = [
                        json.dumps({"custom_id": f"r{i}", "method": "POST",
                                    "url": "/v1/chat/completions", "body": body})
                        for i, body in enumerate(requests)
                    ]  # fmt: skip
                    rates["batch"].append(run_batch(server, engine.url, lines, env=env).rate)
                print(f"{kind:>6}: {rates[kind][-1]:.2f} r/s")
        finally:
            engine.stop()
    batch = sum(rates["batch"]) / len(rates["batch"])
    clients = sum(rates["direct"]) / len(rates["direct"])
    print(f"batch {batch:.2f} r/s, direct with {args.in_flight} clients {clients:.2f} r/s")
    print(f"batch over direct (same engine, same requests): {batch / clients:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
