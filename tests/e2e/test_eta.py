"""The estimated completion end to end: a batch of a few hundred requests on engine-sim
(every request holds an engine slot for the same 0.4 s), two workers of 4 slots (about 30 s
of work), polled with the official SDK. The estimate read once a tenth of the batch is done
must be within a fifth of the time that was then left of the real finish, both measured in
this run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import chat_file
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REQUESTS = 600
LATENCY_S = 0.4
IN_FLIGHT = 4
"""Per worker: one spot and one dedicated worker give 8 slots, 75 rounds of 0.4 s (a tenth
is seven rounds: enough for the measured throughput to count whole rounds)."""
TERMINAL = ("completed", "failed", "expired", "cancelled")


def _estimate(batch: object) -> int | None:
    extra = getattr(batch, "model_extra", None) or {}
    value = extra.get("estimated_completion_at")
    assert value is None or isinstance(value, int)
    return value


def test_the_estimate_at_a_tenth_done_is_within_a_fifth_of_the_time_left(
    db_url: str, tmp_path: Path
) -> None:
    stack = Stack(
        db_url,
        tmp_path,
        sim_args=("--base-latency-s", str(LATENCY_S), "--max-concurrency", "64"),
        env={
            "INFERBATCH_ENGINE_MAX_IN_FLIGHT": str(IN_FLIGHT),
            # every slot open from the start (the adaptive limit passes too, a little later)
            "INFERBATCH_ENGINE_CONCURRENCY": "fixed",
            # the prior is 75 times the real service time: the estimate must measure
            "INFERBATCH_SERVICE_SECONDS_PRIOR": "30",
        },
    ).start(spot=1, dedicated=1)
    try:
        client = stack.client()
        f = client.files.create(file=("in.jsonl", chat_file(REQUESTS)), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        # the first estimate comes with the create (the upload counted the lines), from
        # the prior: nothing is measured yet
        assert _estimate(batch) is not None
        assert not (batch.model_extra or {}).get("warnings")

        estimate, read_at = None, 0.0
        deadline = time.monotonic() + 55
        while batch.status not in TERMINAL:
            assert time.monotonic() < deadline, batch.status
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)
            counts = batch.request_counts
            done = counts.completed + counts.failed if counts else 0
            if estimate is None and batch.status == "in_progress" and done >= REQUESTS / 10:
                estimate, read_at = _estimate(batch), time.time()
                print(f"at {done} done: estimate {estimate - read_at if estimate else None:.1f} s")
        assert batch.status == "completed" and batch.completed_at is not None
        assert estimate is not None, "the batch finished before a tenth was seen done"
        left = batch.completed_at - read_at
        error = abs(estimate - batch.completed_at)
        print(f"finished {left:.1f} s after the read; estimate off by {error} s")
        assert error <= 0.2 * left, (estimate, batch.completed_at, read_at)
    finally:
        stack.close()
