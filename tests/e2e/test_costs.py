"""What a batch cost, end to end: api, scheduler, a spot and a dedicated worker and
engine-sim as processes, the official ``openai`` SDK as the client. A finished batch
carries its cost; the costs API and its CSV show the day; another user sees none of it;
the workers export the GPU time and its cost."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.admin.organization.usage_costs_response import (
    DataResultOrganizationCostsResult,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_sdk import new_user_key, wait_batch
from tests.helpers import chat_file
from tests.stack import ADMIN_KEY, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def priced(db_url: str, tmp_path: Path) -> Iterator[Stack]:
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."sim-model"]\nspot = 2.0\ndedicated = 10.0\n')
    s = Stack(db_url, tmp_path, env={"INFERBATCH_PRICES": str(prices)})
    s.start(metrics=True)
    try:
        yield s
    finally:
        s.close()


def _admin_client(stack: Stack, key: str) -> openai.OpenAI:
    """A client for the SDK's admin API (``client.admin...``), which sends the admin key:
    here any user's key, which sees that user's costs."""
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=key, admin_api_key=key, max_retries=0)


def _batch_cost(stack: Stack, batch_id: str) -> dict[str, Any]:
    """The batch's cost once the leader has folded every settled request into it."""
    client = stack.client()
    deadline = time.monotonic() + 20
    while True:
        cost = client.batches.retrieve(batch_id).to_dict().get("cost")
        if isinstance(cost, dict) or time.monotonic() > deadline:
            assert isinstance(cost, dict), "no cost on the finished batch"
            return cost
        time.sleep(0.2)


def test_a_finished_batch_has_its_cost_and_the_day_shows_it(priced: Stack) -> None:
    client = priced.client()
    upload = client.files.create(file=("in.jsonl", chat_file(40)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(client, batch.id)
    assert done.status == "completed"
    assert done.model_extra is not None and "cost" in done.model_extra
    cost = _batch_cost(priced, batch.id)
    spent = cost["gpu_seconds"]["spot"] + cost["gpu_seconds"]["dedicated"]
    assert spent > 0 and cost["currency"] == "usd"
    amount = cost["amount"]
    # between the spot and the dedicated price of the model (the prices file's)
    assert spent * 2.0 / 3600 - 1e-9 <= amount <= spent * 10.0 / 3600 + 1e-9
    assert amount > 0
    assert cost["all_dedicated_amount"] == pytest.approx(amount + cost["saved"]["total"])

    start = int(time.time()) - 86400
    admin = _admin_client(priced, ADMIN_KEY)
    # the day's rollup is folded by the scheduler after the batch's own counters
    deadline = time.monotonic() + 60
    while True:
        page = admin.admin.organization.usage.costs(start_time=start, group_by=["line_item"])
        results = [
            r
            for b in page.data
            for r in b.results
            if isinstance(r, DataResultOrganizationCostsResult)
        ]
        day = sum(r.amount.value or 0 if r.amount else 0 for r in results)
        if day == pytest.approx(amount) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert day == pytest.approx(amount)
    assert {r.line_item for r in results} <= {"sim-model, spot", "sim-model, dedicated"}
    raw = admin.get(
        "/organization/costs", cast_to=httpx.Response, options={"params": {"start_time": start}}
    )
    assert raw.json()["data"][-1]["results"][0]["object"] == "organization.costs.result"

    export = httpx.get(
        priced.url + "/v1/organization/costs.csv",
        params={"start_time": start},
        headers={"authorization": f"Bearer {client.api_key}"},
    )
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert sum(float(r["cost"]) for r in rows) == pytest.approx(amount, rel=1e-9)
    assert sum(int(r["requests"]) for r in rows) == 40

    other = _admin_client(priced, new_user_key(priced, "someone-else"))
    theirs = other.admin.organization.usage.costs(start_time=start)
    assert all(b.results == [] for b in theirs.data)

    workers = [u for name, u in priced.metrics_urls.items() if "worker" in name]
    exported = 0.0
    for url in workers:
        for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
            for s in family.samples:
                if s.name == "inferbatch_gpu_cost_total" and s.labels["model"] == "sim-model":
                    exported += s.value
    assert exported == pytest.approx(amount, rel=1e-6)
