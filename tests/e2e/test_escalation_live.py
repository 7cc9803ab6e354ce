"""SLA escalation live: a real spot trace, replayed time-compressed, takes the spot fleet
away for most of a batch's completion window. With the default policy the scheduler
asks for dedicated workers in time and the batch meets its deadline; with ``spot-only``
(no escalation) the same batch misses it.

Compression: one trace hour is two wall seconds, so the 30 s window is 15 trace hours, the
AWS notice of 120 s is 0.07 s and the replay starts 3 trace hours (6 s) before an outage
of at least 15 trace hours (30 s). The engine is engine-sim: 0.5 s per request, 4 in
flight per worker (8 requests a second per worker).
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from inferbatch.simulate.traces import load_trace
from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file
from tests.stack import Stack
from tests.trace_cloud import SpotZone, TraceCloud, outage_window

# availability/1-node/aws-02-15-2023/us-east-2a_v100_1.json of the shared spot traces
TRACE = Path(__file__).resolve().parents[1] / "data" / "aws-02-15-2023-us-east-2a_v100_1.json"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
]
SECONDS_PER_HOUR = 2.0
WINDOW = "30s"
REQUESTS = 120
COLD_START = 1.0
"""The cloud's cold start for a dedicated worker, before the process itself starts."""


def _stack(db_url: str, tmp_path: Path, policy: str) -> Stack:
    notice = 120 / (3600 / SECONDS_PER_HOUR)
    return Stack(
        db_url,
        tmp_path,
        sim_args=("--base-latency-s", "0.5", "--max-concurrency", "64"),
        env={
            "INFERBATCH_POLICY": policy,
            "INFERBATCH_MIN_COMPLETION_WINDOW": "10s",
            "INFERBATCH_ENGINE_MAX_IN_FLIGHT": "4",
            "INFERBATCH_ENGINE_TIMEOUT_SECONDS": "5",
            "INFERBATCH_MAX_DEDICATED_WORKERS": "2",
            # the cloud's cold start plus the worker process's own start-up
            "INFERBATCH_DEDICATED_COLD_START_SECONDS": str(COLD_START + 2.0),
            "INFERBATCH_SPOT_INTERRUPTION_NOTICE_SECONDS": f"{notice:.3f}",
            "INFERBATCH_DRAIN_SECONDS": f"{notice:.3f}",
            "INFERBATCH_SCHEDULER_TICK_SECONDS": "0.2",
            # what the operator knows of the engine: 0.5 s per request
            "INFERBATCH_SERVICE_SECONDS_PRIOR": "0.5",
        },
    )


def _timing(db_url: str, batch_id: str) -> dict[str, object]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            """
            SELECT b.status,
                   extract(epoch FROM coalesce(b.completed_at, b.expired_at) - b.deadline_at)
                       ::float8 AS past_deadline,
                   (SELECT count(*) FROM request_results r JOIN workers w ON w.id = r.worker_id
                    WHERE r.batch_id = b.id AND r.status = 'completed' AND w.pool = 'spot')
                       AS on_spot,
                   (SELECT count(*) FROM request_results r JOIN workers w ON w.id = r.worker_id
                    WHERE r.batch_id = b.id AND r.status = 'completed'
                      AND w.pool = 'dedicated') AS on_dedicated
            FROM batches b WHERE b.id = %s
            """,
            (batch_id,),
        ).fetchone()
    assert row is not None
    return dict(zip(("status", "past_deadline", "on_spot", "on_dedicated"), row, strict=True))


def _replay(db_url: str, tmp_path: Path, policy: str) -> tuple[dict[str, object], TraceCloud]:
    trace = load_trace(TRACE)
    start = outage_window(trace, up_hours=3, down_hours=15)
    stack = _stack(db_url, tmp_path, policy).start(spot=0, dedicated=0)
    cloud = TraceCloud(
        stack,
        [SpotZone(trace, start_s=start)],
        seconds_per_hour=SECONDS_PER_HOUR,
        cold_start_s=COLD_START,
    )
    try:
        client = stack.client()
        f = client.files.create(file=("in.jsonl", chat_file(REQUESTS)), purpose="batch")
        cloud.start()
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window=WINDOW
        )
        began = time.monotonic()
        done = wait_batch(client, batch.id, timeout=50)
        result = _timing(stack.env["INFERBATCH_DATABASE_URL"], done.id)
        result["wall"] = round(time.monotonic() - began, 1)
        return result, cloud
    finally:
        try:
            cloud.close()
        finally:
            stack.close()
            for event in cloud.events:
                print(f"{event.at:6.2f} {event.what}")


def test_escalation_meets_a_deadline_that_spot_alone_misses(db_url: str, tmp_path: Path) -> None:
    result, cloud = _replay(db_url, tmp_path, "default")
    print(result)
    assert result["status"] == "completed", result
    assert isinstance(result["past_deadline"], float) and result["past_deadline"] < 0, result
    # spot did what it could before the outage; dedicated workers, asked for by the
    # escalate duty while spot was gone, did the rest
    assert result["on_spot"] and result["on_dedicated"], result
    # dedicated workers were wanted while spot was gone: the count in force when the
    # outage began (the deadline may have asked for one just before), or one asked after
    outage = cloud.notices[0][0]
    in_force = [n for t, n in cloud.desired if t <= outage][-1:]
    in_force += [n for t, n in cloud.desired if t >= outage]
    assert any(n >= 1 for n in in_force), cloud.desired


def test_spot_only_misses_the_same_deadline(db_url: str, tmp_path: Path) -> None:
    result, cloud = _replay(db_url, tmp_path, "spot-only")
    print(result)
    assert cloud.notices and {n for _, n in cloud.desired} == {0}
    assert result["on_dedicated"] == 0, result
    assert result["status"] == "expired" or (
        isinstance(result["past_deadline"], float) and result["past_deadline"] > 0
    ), result
