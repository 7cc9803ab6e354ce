"""Spot across locations, live: two spot locations replayed from two real traces,
time-compressed, against real worker processes. The cheaper location loses its spot
capacity early in a batch's window; the escalate duty sees its worker go and not come
back, infers that the location is short, and asks the other location for the spot fleet.
Every deadline is met and every custom_id is answered exactly once.

Traces: ``us-east-2a`` (spot price 0.25) and ``us-west-2b`` (0.35) of the shared
aws-02-15-2023 folder, aligned as they were probed together. The replay starts 2 trace
hours before an outage of us-east-2a of at least 15 trace hours during which us-west-2b has
capacity. Compression: one trace hour is four wall seconds, so the 60 s window is 15 trace
hours. The engine is engine-sim: 0.5 s per request, 4 in flight per worker.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest

from inferbatch.simulate.traces import load_trace
from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file
from tests.stack import Stack
from tests.trace_cloud import SpotZone, TraceCloud, outage_window

DATA = Path(__file__).resolve().parents[1] / "data"
CHEAP = "us-east-2a"
DEAR = "us-west-2b"
TRACES = {
    CHEAP: DATA / "aws-02-15-2023-us-east-2a_v100_1.json",
    DEAR: DATA / "aws-02-15-2023-us-west-2b_v100_1.json",
}

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SECONDS_PER_HOUR = 4.0
WINDOW = "60s"
REQUESTS = 240
BOOT = 0.5
"""The cloud's delay before a spot worker process starts (its own start-up adds to it)."""


def _stack(db_url: str, tmp_path: Path) -> Stack:
    notice = 120 / (3600 / SECONDS_PER_HOUR)
    locations = [
        # boot: the cloud's delay plus the worker process's own start-up
        {"name": CHEAP, "spot_price_ratio": 0.25, "boot_seconds": 3.0},
        {"name": DEAR, "spot_price_ratio": 0.35, "boot_seconds": 3.0},
    ]
    return Stack(
        db_url,
        tmp_path,
        sim_args=("--base-latency-s", "0.5", "--max-concurrency", "64"),
        env={
            "INFERBATCH_SPOT_LOCATIONS": json.dumps(locations),
            "INFERBATCH_MAX_SPOT_WORKERS": "1",
            "INFERBATCH_LOCATION_PROBE_SECONDS": "12",
            "INFERBATCH_MIN_COMPLETION_WINDOW": "10s",
            "INFERBATCH_ENGINE_MAX_IN_FLIGHT": "4",
            "INFERBATCH_ENGINE_CONCURRENCY": "fixed",
            "INFERBATCH_ENGINE_TIMEOUT_SECONDS": "5",
            "INFERBATCH_MAX_DEDICATED_WORKERS": "4",
            "INFERBATCH_DEDICATED_COLD_START_SECONDS": "3",
            "INFERBATCH_SPOT_INTERRUPTION_NOTICE_SECONDS": f"{notice:.3f}",
            "INFERBATCH_DRAIN_SECONDS": f"{notice:.3f}",
            "INFERBATCH_SCHEDULER_TICK_SECONDS": "0.2",
            "INFERBATCH_SERVICE_SECONDS_PRIOR": "0.5",
        },
    )


def _answers(db_url: str, batch_id: str) -> dict[str, object]:
    """Where the batch's requests were answered (per worker location, else pool), the
    batch's status and how long before its deadline it completed."""
    with psycopg.connect(db_url) as conn:
        by_place = dict(
            conn.execute(
                """
                SELECT coalesce(w.location, w.pool), count(*) FROM request_results r
                JOIN workers w ON w.id = r.worker_id
                WHERE r.batch_id = %s AND r.status = 'completed' GROUP BY 1
                """,
                (batch_id,),
            ).fetchall()
        )
        row = conn.execute(
            """
            SELECT status, extract(epoch FROM completed_at - deadline_at)::float8
            FROM batches WHERE id = %s
            """,
            (batch_id,),
        ).fetchone()
    assert row is not None
    return {"by_place": by_place, "status": row[0], "past": row[1]}


def test_spot_work_moves_to_the_location_that_has_capacity(db_url: str, tmp_path: Path) -> None:
    traces = {name: load_trace(path) for name, path in TRACES.items()}
    start = outage_window(traces[CHEAP], up_hours=2, down_hours=15, others=[traces[DEAR]])
    stack = _stack(db_url, tmp_path).start(spot=0, dedicated=0)
    cloud = TraceCloud(
        stack,
        [
            SpotZone(traces[name], start_s=start, location=name, boot_s=BOOT)
            for name in (CHEAP, DEAR)
        ],
        seconds_per_hour=SECONDS_PER_HOUR,
        cold_start_s=BOOT,
    )
    try:
        client = stack.client()
        f = client.files.create(file=("in.jsonl", chat_file(REQUESTS)), purpose="batch")
        cloud.start()
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window=WINDOW
        )
        began = time.monotonic()
        done = wait_batch(client, batch.id, timeout=90)
        wall = time.monotonic() - began
        answers = _answers(stack.env["INFERBATCH_DATABASE_URL"], done.id)
        output = client.files.content(done.output_file_id or "").text.splitlines()
    finally:
        try:
            cloud.close()
        finally:
            stack.close()
            for event in cloud.events:
                print(f"{event.at:6.2f} {event.what}")
    print(answers, round(wall, 1))
    assert answers["status"] == "completed", answers
    assert isinstance(answers["past"], float) and answers["past"] < 0, answers
    ids = [json.loads(line)["custom_id"] for line in output]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(REQUESTS))  # each exactly once
    # the cheap location ran spot first, alone; its outage moved the fleet to the other one
    outage = min(t for t, where in cloud.notices if where == CHEAP)
    assert {where for t, where in cloud.spot_starts if t < outage} == {CHEAP}
    assert any(where == DEAR for t, where in cloud.spot_starts if t > outage)
    by_place = answers["by_place"]
    assert isinstance(by_place, dict) and by_place.get(CHEAP) and by_place.get(DEAR), by_place
    # probing the cheap location again never stopped the worker that served elsewhere
    assert len([t for t, where in cloud.spot_starts if where == DEAR]) == 1, cloud.spot_starts
