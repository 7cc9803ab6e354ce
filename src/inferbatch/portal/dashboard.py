"""The dashboard: live statistics, deadline risk, recent batches, system health, charts.

Admins see the whole system; a user sees statistics of their own batches (system health is
the same for everyone). Everyone sees the quotas of their key's project: each limit and its
current use. The page renders everything once, then htmx refreshes each part.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from inferbatch.db import browse, escalation, quotas, workers
from inferbatch.metrics import LATENCY_BUCKETS
from inferbatch.portal import charts
from inferbatch.portal.web import Page, PageDep, PortalRoute

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

ENGINE_HEALTH_TTL = 10.0
ENGINE_PROBE_TIMEOUT = 3.0


async def stats(page: Page) -> dict[str, Any]:
    """Numbers of the statistics cards, the at-risk list and the recent batches."""
    now = page.st.now()
    owner = page.project
    async with page.st.db.connection() as conn:
        by_status = await browse.batch_status_counts(conn, owner)
        live = await browse.live_requests(conn, owner)
        hour = await browse.finished_since(conn, owner, now - timedelta(hours=1))
        recent = await browse.finished_since(conn, owner, now - timedelta(minutes=5))
        risky = await browse.at_risk(conn, owner, now, limit=10)
        latest, _ = await browse.list_batches(conn, owner, browse.BatchFilter(), limit=8)

    def total(rows: list[dict[str, Any]], column: str = "n", **match: str) -> int:
        return sum(int(r[column]) for r in rows if all(r[k] == v for k, v in match.items()))

    completed_hour = total(hour, status="completed")
    spot_hour = total(hour, status="completed", pool="spot")
    return {
        "by_status": by_status,
        "batches_total": sum(by_status.values()),
        "queued": total(live, status="queued"),
        "running": total(live, status="running"),
        "queued_by_pool": {p: total(live, status="queued", pool=p) for p in ("spot", "dedicated")},
        "waiting": total(live, status="waiting"),
        "completed_hour": completed_hour,
        "failed_hour": total(hour, status="failed"),
        "per_second": total(recent, status="completed") / 300,
        "tokens_per_second": total(recent, "tokens", status="completed") / 300,
        "spot_hour": spot_hour,
        "dedicated_hour": completed_hour - spot_hour,
        "dedup_requests": total(hour, "deduplicated"),
        "dedup_tokens": total(hour, "dedup_tokens"),
        "at_risk": risky,
        "latest": latest,
    }


async def _probe(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """Whether an engine answers at all: any HTTP answer below 500 to ``GET /models``
    counts (a provider that wants a key answers 401, and is up)."""
    if not name.startswith(("http://", "https://")):
        return {"name": name, "ok": None}  # an in-process engine
    try:
        response = await client.get(name + "/models")
    except httpx.HTTPError:
        return {"name": name, "ok": False}
    return {"name": name, "ok": response.status_code < 500}


async def _engine_health(page: Page) -> list[dict[str, Any]]:
    async def all_engines() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=ENGINE_PROBE_TIMEOUT) as client:
            names = [e.name for e in page.st.engines.engines]
            return list(await asyncio.gather(*(_probe(client, n) for n in names)))

    result: list[dict[str, Any]] = await page.portal.cached(
        "engines", ENGINE_HEALTH_TTL, all_engines
    )
    return result


async def health(page: Page) -> dict[str, Any]:
    """Database round trip, engines reachable, live workers per pool (and, where workers
    declared one, per location)."""
    started = time.perf_counter()
    async with page.st.db.connection() as conn:
        await conn.execute("SELECT 1")
        db_ms = (time.perf_counter() - started) * 1000
        rows = await workers.live_by_pool(conn)
        by_location = await escalation.live_workers_by_location(conn)
    pools: dict[str, dict[str, int]] = {
        p: {"running": 0, "draining": 0, "in_flight": 0} for p in ("spot", "dedicated")
    }
    for r in rows:
        entry = pools.setdefault(r["pool"], {"running": 0, "draining": 0, "in_flight": 0})
        entry[r["state"]] = int(r["n"])
        entry["in_flight"] += int(r["in_flight"])
    locations = {
        pool: sorted(((loc or "none"), n) for loc, n in counts.items())
        for pool, counts in by_location.items()
        if any(loc is not None for loc in counts)
    }
    return {
        "db_ms": db_ms,
        "engines": await _engine_health(page),
        "pools": pools,
        "locations": locations,
    }


async def activity(page: Page, range_name: str) -> dict[str, Any]:
    span, bucket = charts.RANGES.get(range_name, charts.RANGES["1h"])
    now = page.st.now()
    # Buckets start on round times, so refreshes keep the same bars.
    until = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    since = until - timedelta(seconds=span)
    async with page.st.db.connection() as conn:
        rows = await browse.activity_series(conn, page.project, since, bucket)
        counts = await browse.latency_histogram(conn, page.project, since, LATENCY_BUCKETS)
    throughput, pools = charts.activity_charts(rows, since, until, bucket, width=420)
    latency = charts.latency_chart("Latency (last attempt)", LATENCY_BUCKETS, counts, width=420)
    return {
        "range": range_name if range_name in charts.RANGES else "1h",
        "ranges": list(charts.RANGES),
        "charts": [throughput, pools, latency],
    }


QUOTA_LABELS = {
    "queued_requests": "Queued requests",
    "enqueued_tokens": "Enqueued tokens (estimated)",
    "batches_in_progress": "Batches in progress",
    "stored_bytes": "Stored bytes",
    "creates_per_minute": "Batches created this minute",
}


async def quota_rows(page: Page) -> tuple[quotas.ProjectQuotas, list[dict[str, Any]]]:
    """The quotas of the signed-in key's project, one row per quota (``full``: no room)."""
    async with page.st.db.connection() as conn:
        found = await quotas.read(conn, page.user.project_id, page.st.now())
    rows = []
    for name in quotas.QUOTAS:
        limit, used = found.limits[name], found.usage[name]
        full = limit is not None and used >= limit
        rows.append(
            {"name": name, "label": QUOTA_LABELS[name], "limit": limit, "used": used, "full": full}
        )
    return found, rows


RangeParam = Annotated[str, Query(alias="range")]


@router.get("/")
async def dashboard(page: PageDep, period: RangeParam = "1h") -> HTMLResponse:
    project_quotas, rows = await quota_rows(page)
    return page.render(
        "dashboard.html",
        stats=await stats(page),
        health=await health(page),
        activity=await activity(page, period),
        quotas=project_quotas,
        quota_rows=rows,
    )


@router.get("/dashboard/stats")
async def dashboard_stats(page: PageDep) -> HTMLResponse:
    return page.render(
        "partials/dash_stats.html", stats=await stats(page), health=await health(page)
    )


@router.get("/dashboard/charts")
async def dashboard_charts(page: PageDep, period: RangeParam = "1h") -> HTMLResponse:
    return page.render("partials/dash_charts.html", activity=await activity(page, period))
