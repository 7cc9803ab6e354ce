"""Prefix-aware dispatch: throughput with it over without, same engine, same run.

The workload: 8 distinct system prompts of about 1,000 tokens, 50 short questions each
(``--questions``), lines shuffled. With prefix-aware dispatch the queue claims the requests
that share a system prompt together and sends them to one replica, so its prefix cache
serves them; without it (every prefix key zeroed after ingest) they go in line order. Each
variant gets its own system prompts (same sizes), so neither starts with the other's cache.

Engines (``--engine``):

- ``sim``: engine-sim with a prefix cache that holds about two of the eight prompts (an
  engine whose KV memory is mostly taken by running sequences), prefill 5,000 tokens/s and
  decode 500 tokens/s per sequence, 8 sequences at once;
- ``local``: the local llama.cpp engine of ``inferbatch up`` (SmolLM2-135M, llama-cpp-python,
  which reuses the part of a prompt that matches the previous request's), 2 threads.

The worker keeps a fixed number of requests in flight in both variants (8 for engine-sim, 4
for llama.cpp), so the figure isolates dispatch. Goal: >= 1.5 on both engines.

Usage: python -m bench.prefix_dispatch [--engine sim|local] [--questions 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.common import bench_server
from bench.engine_runs import Run, engine_sim, run_batch, sim_stats

VOCABULARY = (
    "the a of to and in is for on with as by at from this that it be are was or an not "
    "model data batch token system user answer question prompt cache engine request queue "
    "policy deadline worker result output input value error time rate cost memory layer "
    "network server client file line text word number table index record field type"
)
WORDS = VOCABULARY.split(" ")
QUESTIONS = (
    "What is {a} plus {b}?",
    "Name a word that rhymes with {w}.",
    "Is {a} larger than {b}?",
    "Spell {w} backwards.",
    "Give one synonym for {w}.",
)


def workload(seed: int, prompts: int, questions: int, words: int, model: str) -> list[str]:
    """JSONL lines: ``prompts`` system prompts of ``words`` words, ``questions`` each,
    shuffled."""
    rng = random.Random(seed)
    lines = []
    for p in range(prompts):
        system = f"Instructions set {seed}-{p}. " + " ".join(
            rng.choice(WORDS) for _ in range(words)
        )
        for q in range(questions):
            question = rng.choice(QUESTIONS).format(
                a=rng.randint(1, 99), b=rng.randint(1, 99), w=rng.choice(WORDS)
            )
            question += f" (question {q})"  # no two alike: deduplication plays no part
            body = {
                "model": model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                "max_tokens": 16,
                "temperature": 0,
            }
            line = {"custom_id": f"p{p}-q{q}", "method": "POST", "url": "/v1/chat/completions"}
            lines.append(json.dumps({**line, "body": body}))
    rng.shuffle(lines)
    return lines


@contextlib.contextmanager
def _engine(kind: str) -> Iterator[tuple[str, str, int, int]]:
    """(engine base URL with /v1, model, in flight, system prompt words)."""
    if kind == "sim":
        args = (
            "--max-concurrency", "8", "--prefill-tokens-per-s", "5000",
            "--decode-tokens-per-s", "500", "--base-latency-s", "0.01",
            "--prefix-cache-tokens", "2200", "--prefix-block-tokens", "64",
        )  # fmt: skip
        with engine_sim(*args) as url:
            yield url + "/v1", "sim-model", 8, 1000
        return
    from inferbatch.engines.local import CHAT_MODEL, _wait_ready, start_chat

    with tempfile.TemporaryDirectory() as tmp:
        engine = start_chat(Path(tmp))
        try:
            _wait_ready(engine, 120)
            yield engine.url, CHAT_MODEL, 4, 700
        finally:
            engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("sim", "local"), default="sim")
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    with bench_server() as server, _engine(args.engine) as (url, model, in_flight, words):
        env = {
            "INFERBATCH_ENGINE_CONCURRENCY": "fixed",
            "INFERBATCH_ENGINE_MAX_IN_FLIGHT": str(in_flight),
            "INFERBATCH_ENGINE_TIMEOUT_SECONDS": "1800",
        }
        runs: dict[str, Run] = {}
        hits: dict[str, float] = {}
        for seed, name in ((1, "without"), (2, "with")):
            lines = workload(seed, args.prompts, args.questions, words, model)
            before = sim_stats(url.removesuffix("/v1")) if args.engine == "sim" else {}
            runs[name] = run_batch(server, url, lines, env=env, zero_prefix=name == "without")
            if args.engine == "sim":
                after = sim_stats(url.removesuffix("/v1"))
                hit = float(after["prefix_cache_hit_tokens"]) - float(  # type: ignore[arg-type]
                    before["prefix_cache_hit_tokens"]  # type: ignore[arg-type]
                )
                miss = float(after["prefix_cache_miss_tokens"]) - float(  # type: ignore[arg-type]
                    before["prefix_cache_miss_tokens"]  # type: ignore[arg-type]
                )
                hits[name] = hit / max(1.0, hit + miss)
    for name, run in runs.items():
        cached = f", prompt tokens cached {hits[name]:.0%}" if name in hits else ""
        print(f"{name:>7} prefix-aware dispatch: {run.n} requests in {run.seconds:.1f}s "
              f"({run.rate:.2f} r/s){cached}")  # fmt: skip
    ratio = runs["with"].rate / runs["without"].rate
    print(f"prefix-aware over line order ({args.engine}): {ratio:.2f} (goal >= 1.5)")


if __name__ == "__main__":
    main()
