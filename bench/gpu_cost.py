"""What counting GPU time costs the write path: results written with it over without.

In one fresh database, ``--requests`` queued requests (~1 KB bodies) are claimed by a
registered spot worker and their results written in groups of ``--group`` (as a worker's
completer writes them), each carrying GPU-seconds:

- cost: :func:`inferbatch.db.requests.record_outcomes` as it is: the request's GPU time
  summed on its row and result, the model read from its input row, the worker's pool
  looked up, GPU-seconds in the deltas;
- reference: the same groups through the result statement as it was before GPU time was
  counted (kept below), which writes the same rows without it.

Each runs ``--repeat`` times on a fresh queue, alternated; the fastest of each counts.
Prints both write rates (results/s) and their ratio (cost / reference; goal >= 0.85).

Usage: python -m bench.gpu_cost [--requests 20000] [--group 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bench.common import bench_database, create_batch
from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import requests as queue
from inferbatch.db import workers
from inferbatch.db.connector import open_pool
from inferbatch.db.counters import append_deltas
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.domain import ClaimedRequest
from inferbatch.scheduler.ingest import ingest_next

OWNER = "bench-spot"

REFERENCE = f"""
WITH v AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS v(
        id bigint, attempt int, kind text, response_status int, response_body text,
        engine_request_id text, error jsonb, prompt_tokens int, completion_tokens int,
        cached_tokens int, reasoning_tokens int, charged bool)
), settled AS (
    UPDATE requests r SET
        status = v.kind, lease_owner = NULL,
        failed_attempts = r.failed_attempts + (v.kind = 'failed' AND v.charged)::int
    FROM v
    WHERE r.id = v.id AND r.status = 'running' AND r.lease_owner = %(owner)s
      AND r.attempts = v.attempt
    RETURNING r.id, r.batch_id, r.pool, r.status, r.attempts, r.started_at
), written AS (
    INSERT INTO request_results (request_id, batch_id, status, pool, attempt, worker_id,
        started_at, finished_at, response_status, response_request_id, response_body, error,
        prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, dedup_of)
    SELECT s.id, s.batch_id, s.status, s.pool, s.attempts, %(owner)s, s.started_at, now(),
        v.response_status, v.engine_request_id, v.response_body, v.error, v.prompt_tokens,
        v.completion_tokens, v.cached_tokens, v.reasoning_tokens, NULL
    FROM settled s JOIN v ON v.id = s.id
    RETURNING request_id AS id, batch_id, pool, status, dedup_of, prompt_tokens,
        completion_tokens, cached_tokens, reasoning_tokens
), deltas AS (
    SELECT batch_id, pool, status, count(*)::int AS n,
        coalesce(sum(prompt_tokens), 0)::bigint AS input_tokens,
        coalesce(sum(completion_tokens), 0)::bigint AS output_tokens,
        coalesce(sum(cached_tokens), 0)::bigint AS cached_tokens,
        coalesce(sum(reasoning_tokens), 0)::bigint AS reasoning_tokens,
        count(*) FILTER (WHERE status = 'completed' AND dedup_of IS NOT NULL)::int
            AS deduplicated,
        0::bigint AS dedup_tokens, 0 AS escalated
    FROM written GROUP BY batch_id, pool, status
),
{append_deltas("deltas")}
SELECT id FROM written
"""
"""The result statement before GPU time was counted (revision 0013's)."""

ANSWER = '{"id":"chatcmpl-bench","object":"chat.completion","choices":[{"index":0,' + (
    '"message":{"role":"assistant","content":"' + "an answer " * 40 + '"}}]}'
)


def _line(run: int, i: int) -> str:
    text = f"run {run} question {i}: " + "tell me more about this " * 36
    body = {"model": "llama-3.1-8b-instruct", "messages": [{"role": "user", "content": text}]}
    return orjson.dumps(
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    ).decode()


def _outcome(req: ClaimedRequest) -> Outcome:
    return Outcome(
        req.id,
        req.attempt,
        "completed",
        response_status=200,
        response_text=ANSWER,
        engine_request_id=f"req-{req.id}",
        prompt_tokens=200,
        completion_tokens=40,
        gpu_seconds=0.125,
    )


async def _reference(pool: Pool, outcomes: list[Outcome]) -> None:
    rows = orjson.dumps(
        [
            {
                "id": o.request_id,
                "attempt": o.attempt,
                "kind": o.kind,
                "response_status": o.response_status,
                "response_body": o.response_text,
                "engine_request_id": o.engine_request_id,
                "error": None,
                "prompt_tokens": o.prompt_tokens,
                "completion_tokens": o.completion_tokens,
                "cached_tokens": None,
                "reasoning_tokens": None,
                "charged": True,
            }
            for o in outcomes
        ]
    ).decode()
    async with pool.connection() as conn:
        await conn.execute(REFERENCE, {"owner": OWNER, "rows": rows})


async def _current(pool: Pool, outcomes: list[Outcome]) -> None:
    async with pool.connection() as conn:
        await queue.record_outcomes(conn, OWNER, outcomes)


async def _run(url: str, blobs: LocalBlobStore, n: int, group: int, reference: bool) -> float:
    """Results written per second, for a fresh queue of ``n`` requests."""
    # lines of their own each run: deduplication would answer repeated ones at ingest
    run = time.monotonic_ns()
    batch_id = await create_batch(url, blobs, n, lines=[_line(run, i) for i in range(n)])
    async with open_pool(url, max_size=2) as pool:
        done = await ingest_next(pool, blobs, max_requests=n, now=lambda: datetime.now(UTC))
        assert done == batch_id
        async with pool.connection() as conn:
            claimed = await queue.claim(conn, pool="spot", owner=OWNER, n=n)
            await conn.execute("CHECKPOINT")
        assert len(claimed) == n, len(claimed)
        outcomes = [_outcome(r) for r in claimed]
        write = _reference if reference else _current
        started = time.perf_counter()
        for i in range(0, n, group):
            await write(pool, outcomes[i : i + group])
        took = time.perf_counter() - started
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM requests WHERE status = 'running'")
            row = await cur.fetchone()
            assert row is not None and row["n"] == 0, "a write was refused"
    return n / took


async def main(n: int, group: int, repeat: int) -> None:
    with bench_database() as url, tempfile.TemporaryDirectory() as tmp:
        blobs = LocalBlobStore(Path(tmp))
        async with open_pool(url, max_size=1) as pool, pool.connection() as conn:
            await workers.register(conn, worker_id=OWNER, pool="spot", host="bench", pid=1)
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(repeat):
            for reference in (True, False):
                rates[reference].append(await _run(url, blobs, n, group, reference))
        ref, cost = max(rates[True]), max(rates[False])
        print(f"requests {n}, groups of {group}, best of {repeat}")
        print(f"reference (no GPU time): {ref:,.0f} results/s")
        print(f"with GPU time and cost:  {cost:,.0f} results/s")
        print(f"ratio cost / reference: {cost / ref:.2f} (goal >= 0.85)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--group", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.group, args.repeat))
