"""What work cost: GPU time recorded per attempt, folded into the batch and the daily
rollup by pool and model, priced when folded; the costs API, its CSV and the portal page
over the rollup."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from inferbatch.api.app import create_app
from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import batches, costs, counters, users, workers
from inferbatch.db import requests as queue
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.domain import DEFAULT_PROJECT_ID, BatchRecord, ClaimedRequest
from inferbatch.engines.registry import EngineRegistry
from inferbatch.pricing import GpuPrice, PriceTable
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services.serialize import batch_object
from tests.helpers import chat_line
from tests.integration.fixtures import make_batch, make_project, make_user, utcnow

pytestmark = pytest.mark.integration

PRICES = PriceTable(
    "usd",
    GpuPrice(spot=1.0, dedicated=4.0),
    MappingProxyType({"m-b": GpuPrice(spot=2.0, dedicated=8.0)}),
)
"""Per GPU-hour: 360 GPU-seconds of m-a cost 0.1 on spot, 0.4 on dedicated."""


def _money(value: Decimal | float | str) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("1e-9"))


async def _workers(pool: Pool) -> None:
    async with pool.connection() as conn:
        await workers.register(conn, worker_id="spot-w", pool="spot", host="h", pid=1)
        await workers.register(conn, worker_id="ded-w", pool="dedicated", host="h", pid=2)


async def _queued(pool: Pool, blobs: LocalBlobStore, lines: list[str], user: str = "alice") -> str:
    owner = await make_user(pool, user)
    batch = await make_batch(pool, blobs, owner, ("\n".join(lines) + "\n").encode())
    assert await ingest_next(pool, blobs, max_requests=1000, now=utcnow) == batch.id
    return batch.id


async def _claim(pool: Pool, owner: str, n: int = 100) -> list[ClaimedRequest]:
    async with pool.connection() as conn:
        return await queue.claim(conn, pool="spot", owner=owner, n=n)


async def _record(pool: Pool, owner: str, outcomes: list[Outcome]) -> set[int]:
    async with pool.connection() as conn:
        return await queue.record_outcomes(conn, owner, outcomes)


def _done(req: ClaimedRequest, gpu_seconds: float, tokens: tuple[int, int] = (3, 4)) -> Outcome:
    return Outcome(
        req.id,
        req.attempt,
        "completed",
        response_status=200,
        response_body={"ok": True},
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        gpu_seconds=gpu_seconds,
    )


async def _fold(pool: Pool, prices: PriceTable = PRICES) -> None:
    async with pool.connection() as conn:
        await counters.fold(conn, await counters.pending_batches(conn), prices)
        await counters.fold_usage(conn)


async def _batch(pool: Pool, batch_id: str) -> BatchRecord:
    async with pool.connection() as conn:
        b = await batches.get(conn, batch_id, None)
    assert b is not None
    return b


async def _usage(pool: Pool) -> dict[tuple[str, str], costs.UsageFigures]:
    """Today's rollup rows by (model, pool)."""
    today = datetime.now(UTC).date()
    async with pool.connection() as conn:
        rows = await costs.rows(conn, None, today, today + timedelta(days=1))
    assert all(r.day == today for r in rows)
    return {(r.model or "", r.pool or ""): r for r in rows}


async def test_gpu_time_is_folded_into_the_batch_and_the_day_by_pool_and_model(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _workers(pool)
    lines = [chat_line(f"{m}{i}", f"q {m}{i}", model=f"m-{m}") for i in range(2) for m in "ab"]
    batch_id = await _queued(pool, blobs, lines)
    # the spot worker runs one request of each model; the other two go back and a
    # dedicated worker takes them from the spot pool: their GPU time is dedicated time
    claimed = await _claim(pool, "spot-w")
    by_model = {r.model: r for r in claimed}
    kept = [by_model["m-a"], by_model["m-b"]]
    rest = [r for r in claimed if r not in kept]
    assert await _record(pool, "spot-w", [_done(kept[0], 360), _done(kept[1], 720)]) == {
        r.id for r in kept
    }
    async with pool.connection() as conn:
        back = [queue.Requeue(r.id, attempt=r.attempt, owner="spot-w") for r in rest]
        assert (await queue.requeue(conn, ("running",), back)).n == 2
    on_dedicated = await _claim(pool, "ded-w")
    assert sorted(r.model for r in on_dedicated) == ["m-a", "m-b"]
    gpu = {"m-a": 1080.0, "m-b": 1440.0}
    await _record(pool, "ded-w", [_done(r, gpu[r.model]) for r in on_dedicated])

    before = await _batch(pool, batch_id)
    assert before.cost_currency is None and batch_object(before).cost is None  # not folded
    await _fold(pool)
    b = await _batch(pool, batch_id)
    assert (b.spot_gpu_seconds, b.dedicated_gpu_seconds) == (1080.0, 2520.0)
    assert b.dedup_saved_gpu_seconds == 0
    # spot: 0.1 h of m-a at 1 + 0.2 h of m-b at 2; dedicated: 0.3 h at 4 + 0.4 h at 8
    assert _money(b.gpu_cost) == _money("4.9")
    assert _money(b.all_dedicated_cost) == _money("6.4")
    cost = batch_object(b).cost
    assert cost is not None and cost.currency == "usd"
    assert (cost.gpu_seconds.spot, cost.gpu_seconds.dedicated) == (1080.0, 2520.0)
    assert cost.saved.spot == pytest.approx(1.5) and cost.saved.dedup == 0
    assert cost.saved.total == pytest.approx(1.5)
    assert cost.amount + cost.saved.total == pytest.approx(cost.all_dedicated_amount)
    assert (b.input_tokens, b.output_tokens) == (12, 16)  # tokens stay as they were

    usage = await _usage(pool)
    assert set(usage) == {
        ("m-a", "spot"),
        ("m-a", "dedicated"),
        ("m-b", "spot"),
        ("m-b", "dedicated"),
    }
    # GPU time on the pool that spent it; requests and tokens on the pool they settled in
    assert (usage["m-a", "spot"].gpu_seconds, usage["m-a", "dedicated"].gpu_seconds) == (
        360.0,
        1080.0,
    )
    assert _money(usage["m-b", "dedicated"].cost) == _money("3.2")
    assert _money(usage["m-b", "spot"].all_dedicated_cost) == _money("1.6")
    assert (usage["m-a", "spot"].requests, usage["m-a", "dedicated"].requests) == (2, 0)
    assert usage["m-b", "spot"].input_tokens == 6
    assert sum(u.cost for u in usage.values()) == b.gpu_cost
    assert {u.owner_id for u in usage.values()} == {b.owner_id}
    # a fold with nothing new adds nothing
    await _fold(pool)
    assert (await _batch(pool, batch_id)).gpu_cost == b.gpu_cost


async def test_a_retried_attempt_counts_its_gpu_time(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _workers(pool)
    batch_id = await _queued(pool, blobs, [chat_line("r0", model="m-a")])
    [first] = await _claim(pool, "spot-w")
    retry = Outcome(first.id, first.attempt, "retry", error={"code": "x"}, gpu_seconds=100)
    assert await _record(pool, "spot-w", [retry]) == {first.id}
    # the same write again is fenced (the attempt moved on): not counted twice
    assert await _record(pool, "spot-w", [retry]) == set()
    await _fold(pool)
    assert (await _batch(pool, batch_id)).spot_gpu_seconds == 100  # spent, though not settled
    [second] = await _claim(pool, "spot-w")
    assert second.attempt == first.attempt + 1
    await _record(pool, "spot-w", [_done(second, 50)])
    await _fold(pool)
    b = await _batch(pool, batch_id)
    assert b.spot_gpu_seconds == 150
    assert _money(b.gpu_cost) == _money(Decimal(150) / 3600)
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT gpu_seconds FROM request_results WHERE request_id = %s", (second.id,)
        )
        assert await cur.fetchone() == {"gpu_seconds": 150.0}  # the sum over its attempts
    usage = await _usage(pool)
    assert usage["m-a", "spot"].gpu_seconds == 150
    assert usage["m-a", "spot"].requests == 1


async def test_dedup_copies_count_as_saved_not_spent(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _workers(pool)
    line = chat_line("same", "the same question", model="m-a")
    first = await _queued(pool, blobs, [line])
    [req] = await _claim(pool, "spot-w")
    await _record(pool, "spot-w", [_done(req, 720)])
    again = await _queued(pool, blobs, [line])  # answered at ingest from the first's output
    await _fold(pool)
    origin, copy = await _batch(pool, first), await _batch(pool, again)
    assert origin.spot_gpu_seconds == 720 and origin.dedup_saved_gpu_seconds == 0
    assert (copy.spot_gpu_seconds, copy.dedicated_gpu_seconds) == (0, 0)
    assert copy.dedup_saved_gpu_seconds == 720 and copy.gpu_cost == 0
    # 0.2 GPU-hours not run, at the dedicated price (4)
    assert _money(copy.dedup_saved_cost) == _money("0.8")
    cost = batch_object(copy).cost
    assert cost is not None
    assert cost.amount == 0 and cost.saved.dedup == pytest.approx(0.8)
    assert cost.all_dedicated_amount == pytest.approx(0.8) and cost.saved.spot == 0
    usage = await _usage(pool)
    assert usage["m-a", "spot"].gpu_seconds == 720  # spent once
    assert usage["m-a", "spot"].dedup_saved_gpu_seconds == 720
    assert usage["m-a", "spot"].deduplicated == 1
    assert _money(usage["m-a", "spot"].dedup_saved_cost) == _money("0.8")


async def test_cost_is_fixed_at_the_prices_in_force_when_folded(pool: Pool, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _workers(pool)
    batch_id = await _queued(pool, blobs, [chat_line(f"p{i}", f"q{i}") for i in range(2)])
    first, second = await _claim(pool, "spot-w")
    await _record(pool, "spot-w", [_done(first, 360)])
    await _fold(pool)  # spot at 1 per GPU-hour
    dearer = PriceTable("usd", GpuPrice(spot=3.0, dedicated=6.0))
    await _record(pool, "spot-w", [_done(second, 360)])
    await _fold(pool, dearer)  # spot at 3 from now on: the first stays at 1
    b = await _batch(pool, batch_id)
    assert _money(b.gpu_cost) == _money("0.4")
    assert _money(b.all_dedicated_cost) == _money(Decimal("0.4") + Decimal("0.6"))
    [day] = (await _usage(pool)).values()
    assert _money(day.cost) == _money("0.4")


# -- the API and the portal over the rollup -------------------------------------------------

D1 = date(2025, 3, 1)
D3 = date(2025, 3, 3)


def _unix(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


USAGE = """
INSERT INTO usage_daily (day, project_id, owner_id, model, pool, currency, requests,
    input_tokens, output_tokens, gpu_seconds, dedup_saved_gpu_seconds, cost, dedup_saved_cost,
    all_dedicated_cost)
VALUES (%(day)s, %(project)s, %(owner)s, %(model)s, %(pool)s, 'usd', %(requests)s, 10, 20,
    %(gpu)s, %(dedup_gpu)s, %(cost)s, %(dedup_cost)s, %(all)s)
"""


@pytest.fixture
async def api(pool: Pool, db_url: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """The api app in process over a rollup of three days: alice on the 1st (two pools)
    and the 3rd, bob (of another project) on the 1st; a key for each, for dave (alice's
    fellow member, who spent nothing) and for an admin."""
    keys = {"alice": "k-alice", "bob": "k-bob", "dave": "k-dave", "root": "k-root"}
    other = await make_project(pool)
    projects = {name: other if name == "bob" else DEFAULT_PROJECT_ID for name in keys}
    ids: dict[str, str] = {}
    async with pool.connection() as conn:
        for name, key in keys.items():
            user = await users.ensure_user(conn, name, is_admin=name == "root")
            await users.add_key(conn, user.id, key, project_id=projects[name])
            ids[name] = user.id
        rows = [
            (D1, "alice", "m-a", "spot", 2, 360.0, 0.0, "1.0", "0", "4.0"),
            (D1, "alice", "m-a", "dedicated", 0, 1800.0, 0.0, "2.0", "0", "2.0"),
            (D1, "bob", "m-b", "spot", 5, 720.0, 360.0, "5.0", "0.5", "9.0"),
            (D3, "alice", "=m-b", "dedicated", 1, 100.0, 0.0, "3.0", "0", "3.0"),
        ]
        for day, who, model, pool_name, n, gpu, dedup_gpu, cost, dedup_cost, all_ in rows:
            await conn.execute(
                USAGE,
                {
                    "day": day,
                    "project": projects[who],
                    "owner": ids[who],
                    "model": model,
                    "pool": pool_name,
                    "requests": n,
                    "gpu": gpu,
                    "dedup_gpu": dedup_gpu,
                    "cost": cost,
                    "dedup_cost": dedup_cost,
                    "all": all_,
                },
            )
    settings = Settings(blob_dir=tmp_path)
    app: FastAPI = create_app(
        settings, db_url, LocalBlobStore(tmp_path), EngineRegistry.from_specs({}, timeout=1)
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield {"client": client, "keys": keys, "ids": ids, "projects": projects}


async def _costs(api: dict[str, Any], who: str, **params: Any) -> httpx.Response:
    client: httpx.AsyncClient = api["client"]
    return await client.get(
        "/v1/organization/costs",
        params=params,
        headers={"authorization": f"Bearer {api['keys'][who]}"},
    )


def _amounts(page: dict[str, Any]) -> list[list[float]]:
    return [[r["amount"]["value"] for r in b["results"]] for b in page["data"]]


async def test_costs_come_in_day_buckets_and_a_key_sees_only_its_project_s(
    api: dict[str, Any],
) -> None:
    period = {"start_time": _unix(D1) + 3600, "end_time": _unix(D3) + 60}
    mine = (await _costs(api, "alice", **period)).json()
    assert mine["object"] == "page" and mine["has_more"] is False
    assert [(b["start_time"], b["end_time"]) for b in mine["data"]] == [
        (_unix(D1) + i * 86400, _unix(D1) + (i + 1) * 86400) for i in range(3)
    ]
    assert _amounts(mine) == [[3.0], [], [3.0]]  # bob's 5.0 on the 1st is not hers
    [result] = mine["data"][0]["results"]
    assert result["object"] == "organization.costs.result"
    assert result["amount"] == {"value": 3.0, "currency": "usd"}
    assert result["project_id"] is None and result["line_item"] is None
    assert result["saved"] == {"spot": 3.0, "dedup": 0.0, "total": 3.0}
    assert result["all_dedicated_amount"] == 6.0 and result["gpu_seconds"] == 2160.0
    # grouping by user never shows her anyone else
    by_user = (await _costs(api, "alice", group_by="user_id", **period)).json()
    assert {r["user_id"] for b in by_user["data"] for r in b["results"]} == {api["ids"]["alice"]}
    # a fellow member of her project sees the project's costs, hers included
    assert _amounts((await _costs(api, "dave", **period)).json()) == [[3.0], [], [3.0]]
    assert _amounts((await _costs(api, "bob", **period)).json()) == [[5.0], [], []]

    everyone = (await _costs(api, "root", **period)).json()
    assert _amounts(everyone) == [[8.0], [], [3.0]]
    grouped = (await _costs(api, "root", group_by="user_id", **period)).json()
    first_day = {r["user_id"]: r["amount"]["value"] for r in grouped["data"][0]["results"]}
    assert first_day == {api["ids"]["alice"]: 3.0, api["ids"]["bob"]: 5.0}
    # the official SDK's array form, both fields
    client: httpx.AsyncClient = api["client"]
    both = await client.get(
        "/v1/organization/costs",
        params=[
            ("start_time", period["start_time"]),
            ("end_time", period["end_time"]),
            ("group_by[]", "user_id"),
            ("group_by[]", "line_item"),
        ],
        headers={"authorization": "Bearer k-root"},
    )
    items = {
        (r["user_id"], r["line_item"]): (r["amount"]["value"], r["quantity"])
        for r in both.json()["data"][0]["results"]
    }
    assert items == {
        (api["ids"]["alice"], "m-a, spot"): (1.0, 360.0),
        (api["ids"]["alice"], "m-a, dedicated"): (2.0, 1800.0),
        (api["ids"]["bob"], "m-b, spot"): (5.0, 720.0),
    }


async def test_costs_pages_follow_next_page(api: dict[str, Any]) -> None:
    period = {"start_time": _unix(D1), "end_time": _unix(D3) + 86400}
    first = (await _costs(api, "root", limit=2, **period)).json()
    assert len(first["data"]) == 2 and first["has_more"] is True
    assert first["next_page"] == str(_unix(D3))
    rest = (await _costs(api, "root", limit=2, page=first["next_page"], **period)).json()
    assert rest["has_more"] is False and rest["next_page"] is None
    assert _amounts(rest) == [[3.0]]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start_time": _unix(D3), "end_time": _unix(D1)}, "end_time"),
        ({"start_time": _unix(D1), "group_by": "model"}, "group_by"),
        ({"start_time": _unix(D1), "group_by": "project_id"}, "group_by"),
        ({"start_time": _unix(D1), "bucket_width": "1h"}, "bucket_width"),
        ({"start_time": _unix(D1), "page": "soon"}, "page"),
        ({"start_time": _unix(D1), "limit": 0}, "limit"),
        ({"end_time": _unix(D1)}, "start_time"),
    ],
)
async def test_bad_costs_queries_are_400s_in_openai_s_envelope(
    api: dict[str, Any], params: dict[str, Any], param: str
) -> None:
    answer = await _costs(api, "alice", **params)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


async def test_the_csv_has_a_row_per_day_user_model_and_pool(api: dict[str, Any]) -> None:
    client: httpx.AsyncClient = api["client"]
    period = {"start_time": _unix(D1), "end_time": _unix(D3) + 86400}

    async def read(key: str) -> list[dict[str, str]]:
        answer = await client.get(
            "/v1/organization/costs.csv", params=period, headers={"authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/csv")
        assert "costs_2025-03-01_2025-03-03.csv" in answer.headers["content-disposition"]
        reader = csv.DictReader(io.StringIO(answer.text))
        assert reader.fieldnames is not None and reader.fieldnames[:6] == [
            "day",
            "user_id",
            "user_name",
            "model",
            "pool",
            "currency",
        ]
        return list(reader)

    every = await read("k-root")
    assert [(r["day"], r["user_name"], r["model"], r["pool"]) for r in every] == sorted(
        [
            ("2025-03-01", "alice", "m-a", "dedicated"),
            ("2025-03-01", "alice", "m-a", "spot"),
            ("2025-03-01", "bob", "m-b", "spot"),
            ("2025-03-03", "alice", "'=m-b", "dedicated"),  # never a formula
        ],
        key=lambda r: (r[0], api["projects"][r[1]], api["ids"][r[1]], r[2].lstrip("'"), r[3]),
    )
    bob = next(r for r in every if r["user_name"] == "bob")
    assert (bob["gpu_seconds"], bob["cost"], bob["dedup_saved"]) == ("720.0", "5", "0.5")
    assert (bob["spot_saved"], bob["all_dedicated_cost"]) == ("3.5", "9")
    assert (bob["requests"], bob["input_tokens"], bob["output_tokens"]) == ("5", "10", "20")
    assert {r["user_name"] for r in await read("k-alice")} == {"alice"}
    assert {r["user_name"] for r in await read("k-bob")} == {"bob"}
    answer = await client.get("/v1/organization/costs.csv", params=period)
    assert answer.status_code == 401


async def test_the_portal_costs_page_lists_days_and_users_for_an_admin(
    api: dict[str, Any], pool: Pool, tmp_path: Path
) -> None:
    client: httpx.AsyncClient = api["client"]
    form = await client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    signed_in = await client.post(
        "/login", data={"api_key": "k-root", "csrf_token": token.group(1), "next": "/costs"}
    )
    assert signed_in.status_code == 303
    page = await client.get("/costs", params={"from": "2025-03-01", "to": "2025-03-03"})
    assert page.status_code == 200
    html = page.text
    rows = re.findall(r'data-testid="costs-row" data-day="([^"]+)" data-user="([^"]+)"', html)
    assert sorted(rows) == [("2025-03-01", "alice"), ("2025-03-01", "bob"), ("2025-03-03", "alice")]
    assert "11.00 USD" in html  # the period's cost: 3 + 5 + 3
    assert 'href="/costs.csv?from=2025-03-01&amp;to=2025-03-03"' in html
    export = await client.get("/costs.csv", params={"from": "2025-03-01", "to": "2025-03-03"})
    assert export.status_code == 200 and len(export.text.splitlines()) == 5
    bad = await client.get("/costs", params={"from": "2025-03-09", "to": "2025-03-01"})
    assert bad.status_code == 400
    # a batch's page shows its cost and savings
    owner = await make_user(pool, "alice")
    batch = await make_batch(pool, LocalBlobStore(tmp_path), owner, chat_line("x").encode())
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE batches SET spot_gpu_seconds = 7200, gpu_cost = 2.5, "
            "all_dedicated_cost = 8, cost_currency = 'usd' WHERE id = %s",
            (batch.id,),
        )
    detail = (await client.get(f"/batches/{batch.id}")).text
    assert 'data-testid="batch-cost"' in detail
    assert "2.50 USD" in detail and "5.50 USD" in detail  # cost, and saved by spot
