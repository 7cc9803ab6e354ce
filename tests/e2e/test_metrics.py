"""Metrics and logs of a running deployment: api, scheduler and both worker pools scraped
after real batches went through them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_line
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=10).text
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
    )


@pytest.fixture
def observed(db_url: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(db_url, tmp_path, env={"INFERBATCH_LOG_FORMAT": "json"})
    s.start(metrics=True)
    try:
        yield s
    finally:
        s.close()


def test_every_role_exports_what_happened(observed: Stack) -> None:
    client = observed.client()
    # 30 distinct requests and 10 repeats of them: 30 engine calls, 10 deduplicated
    lines = [chat_line(f"r{i}", f"text {i % 30}") for i in range(40)]
    data = ("\n".join(lines) + "\n").encode()
    upload = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"priority": "10"},
    )
    done = wait_batch(client, batch.id)
    assert done.status == "completed"
    client.batches.retrieve(batch.id)

    api = scrape(observed.metrics_urls["api"])
    sched = scrape(observed.metrics_urls["scheduler"])
    workers = [scrape(u) for name, u in observed.metrics_urls.items() if "worker" in name]

    # api: request durations by route template, never a raw id; system gauges
    routes = {lab["route"] for n, lab, _ in api if n.startswith("inferbatch_api_request")}
    assert "/v1/batches/{batch_id}" in routes
    assert not any(batch.id in value for _, lab, _ in api for value in lab.values())
    assert total(api, "inferbatch_api_request_duration_seconds_count", method="POST") >= 2
    assert total(api, "inferbatch_ready") == 1
    assert total(api, "inferbatch_queue_depth", pool="spot", priority="high") == 0
    assert total(api, "inferbatch_batches", status="completed") == 1
    assert ("inferbatch_dedicated_workers_desired", {}, 0.0) in api

    # workers: the 30 engine calls, by endpoint, model and pool, with their tokens
    completed = sum(
        total(w, "inferbatch_requests_total", status="completed", model="sim-model")
        for w in workers
    )
    assert completed == 30
    calls = sum(total(w, "inferbatch_engine_requests_total") for w in workers)
    assert calls == 30
    assert sum(total(w, "inferbatch_tokens_total", direction="input") for w in workers) > 0
    assert sum(total(w, "inferbatch_worker_busy_seconds_total") for w in workers) > 0

    # scheduler: ingest, deduplication, finalization, leadership
    assert total(sched, "inferbatch_ingested_lines_total") == 40
    assert total(sched, "inferbatch_ingest_batches_total", outcome="queued") == 1
    assert total(sched, "inferbatch_dedup_hits_total") == 10
    assert total(sched, "inferbatch_requests_total", status="deduplicated", pool="none") == 10
    assert total(sched, "inferbatch_dedup_tokens_saved_total") > 0
    assert total(sched, "inferbatch_batches_finished_total", status="completed") == 1
    assert total(sched, "inferbatch_deadline_misses_total") == 0
    assert total(sched, "inferbatch_scheduler_leader") == 1
    assert total(sched, "inferbatch_scheduler_duty_duration_seconds_count", duty="ingest") > 0

    # JSON logs: every line of the scheduler's log is one object; ingest names the batch
    events = [json.loads(line) for line in observed.log("scheduler").splitlines() if line]
    assert all({"ts", "level", "role", "msg"} <= e.keys() for e in events)
    assert any(e.get("batch_id") == batch.id and "ingested" in e["msg"] for e in events)


def test_cancelled_requests_are_counted(observed: Stack) -> None:
    observed.stop("worker-spot-0")
    observed.stop("worker-dedicated-0")
    client = observed.client()
    data = ("\n".join(chat_line(f"c{i}", f"c {i}") for i in range(12)) + "\n").encode()
    upload = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for _ in range(100):
        depth = total(scrape(observed.metrics_urls["api"]), "inferbatch_queue_depth")
        if depth == 12:
            break
        time.sleep(0.1)
    assert depth == 12
    assert (
        total(scrape(observed.metrics_urls["api"]), "inferbatch_queue_depth", priority="normal")
        == 12
    )
    client.batches.cancel(batch.id)
    assert wait_batch(client, batch.id).status == "cancelled"
    sched = scrape(observed.metrics_urls["scheduler"])
    assert total(sched, "inferbatch_requests_total", status="cancelled") == 12
    assert total(sched, "inferbatch_batches_finished_total", status="cancelled") == 1
