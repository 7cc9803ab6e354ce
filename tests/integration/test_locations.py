"""Data residency in the queue: restricted requests go only to workers whose location their
batch allows, through every move a request makes; unrestricted ones go to anyone."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from inferbatch.api.app import create_app
from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings, SpotLocation
from inferbatch.db import escalation, users
from inferbatch.db import locations as location_sets
from inferbatch.db import requests as queue
from inferbatch.db import workers as registry
from inferbatch.db.types import Pool
from inferbatch.domain import ClaimedRequest
from inferbatch.engines.registry import EngineRegistry
from inferbatch.metrics import SystemMetrics
from inferbatch.policy.escalation import policy_by_name
from inferbatch.scheduler.escalate import EscalationLoop
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import requests as request_service
from tests.helpers import chat_file
from tests.integration.fixtures import make_batch, make_user, utcnow

pytestmark = pytest.mark.integration

EU = "eu-west-1a"
US = "us-east-1a"


async def _queued(pool: Pool, blobs: LocalBlobStore, n: int, prefix: str, **metadata: str) -> str:
    user = await make_user(pool)
    batch = await make_batch(
        pool, blobs, user, chat_file(n, prefix=prefix), metadata={"dedup": "off", **metadata}
    )
    assert await ingest_next(pool, blobs, max_requests=100_000, now=utcnow) == batch.id
    return batch.id


async def _claim(
    pool: Pool, owner: str, location: str | None, n: int = 100, pool_name: str = "spot"
) -> list[ClaimedRequest]:
    async with pool.connection() as conn:
        return await queue.claim(conn, pool=pool_name, owner=owner, n=n, location=location)


def _ids(claimed: list[ClaimedRequest]) -> list[str]:
    return [c.custom_id for c in claimed]


async def test_a_worker_takes_unrestricted_work_and_the_restricted_work_its_location_allows(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _queued(pool, blobs, 2, "any")
    await _queued(pool, blobs, 2, "eu", allowed_locations="eu-*")
    await _queued(pool, blobs, 2, "us", allowed_locations=f"{US},ap-south-1")
    assert sorted(_ids(await _claim(pool, "u", US))) == ["any-0", "any-1", "us-0", "us-1"]
    assert _ids(await _claim(pool, "x", "ap-northeast-1a")) == []
    assert _ids(await _claim(pool, "e", EU)) == ["eu-0", "eu-1"]


async def test_a_worker_without_a_location_never_claims_restricted_requests(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _queued(pool, blobs, 3, "eu", allowed_locations="eu-west-1a")
    await _queued(pool, blobs, 2, "any")
    assert _ids(await _claim(pool, "n", None)) == ["any-0", "any-1"]
    assert _ids(await _claim(pool, "n", None)) == []
    assert _ids(await _claim(pool, "e", EU)) == ["eu-0", "eu-1", "eu-2"]


async def test_restricted_and_unrestricted_requests_share_one_claim_order(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _queued(pool, blobs, 2, "any")
    await _queued(pool, blobs, 2, "eu", allowed_locations="eu-*", priority="10")
    claimed = await _claim(pool, "e", EU, n=3)
    assert _ids(claimed) == ["eu-0", "eu-1", "any-0"]
    cursor = queue.QueueCursor("spot", rescan_seconds=3600, clock=lambda: 0.0, location=EU)
    async with pool.connection() as conn:
        assert _ids(await cursor.claim(conn, owner="e", n=5)) == ["any-1"]


async def test_a_located_cursor_sees_restricted_work_queued_after_it_started(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _queued(pool, blobs, 4, "any")
    now = [0.0]
    cursor = queue.QueueCursor("spot", rescan_seconds=5, clock=lambda: now[0], location=EU)

    async def take(n: int) -> list[str]:
        async with pool.connection() as conn:
            return _ids(await cursor.claim(conn, owner="e", n=n))

    assert await take(2) == ["any-0", "any-1"]  # no location set yet: the plain claim
    await _queued(pool, blobs, 2, "eu", allowed_locations="eu-*", priority="10")
    assert await take(1) == ["any-2"]  # the sets are read again only after rescan_seconds
    now[0] = 5.0
    assert await take(3) == ["eu-0", "eu-1", "any-3"]


async def test_concurrent_claimers_in_two_locations_each_get_only_what_they_may_run(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _queued(pool, blobs, 30, "any")
    await _queued(pool, blobs, 30, "eu", allowed_locations="eu-*")
    await _queued(pool, blobs, 30, "us", allowed_locations="us-*")

    async def drain(owner: str, location: str) -> list[str]:
        got: list[str] = []
        while claimed := await _claim(pool, owner, location, n=3):
            got += _ids(claimed)
        return got

    eu, us = await asyncio.gather(drain("e", EU), drain("u", US))
    assert not set(eu) & set(us)
    assert {c for c in eu if not c.startswith("any")} == {f"eu-{i}" for i in range(30)}
    assert {c for c in us if not c.startswith("any")} == {f"us-{i}" for i in range(30)}
    assert {c for c in eu + us if c.startswith("any")} == {f"any-{i}" for i in range(30)}


async def test_a_restriction_holds_through_rescue_escalation_retry_and_clone(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    batch_id = await _queued(pool, blobs, 2, "eu", allowed_locations="eu-*")
    # rescue: a lost worker's claim goes back to the queue, still restricted
    async with pool.connection() as conn:
        await registry.register(conn, worker_id="gone", pool="spot", host="h", pid=1, location=EU)
    assert len(await _claim(pool, "gone", EU)) == 2
    async with pool.connection() as conn:
        await conn.execute("UPDATE workers SET heartbeat_at = now() - interval '1 hour'")
        lost = await queue.lost_claims(conn, 30.0)
        await queue.requeue(
            conn,
            ("running",),
            [
                queue.Requeue(c.request_id, attempt=c.attempt, owner=c.owner, interrupted=True)
                for c in lost
            ],
        )
    assert await _claim(pool, "u", US) == []
    assert await _claim(pool, "n", None) == []
    # escalation: on dedicated, only dedicated workers the batch allows take it
    async with pool.connection() as conn:
        assert await escalation.move_to_dedicated(conn, batch_id, 2, "test") == 2
    assert await _claim(pool, "d", None, pool_name="dedicated") == []
    assert await _claim(pool, "d", US, pool_name="dedicated") == []
    claimed = await _claim(pool, "d", "eu-central-1", pool_name="dedicated")
    assert _ids(claimed) == ["eu-0", "eu-1"]
    # retry: a failed request goes back restricted
    user = await make_user(pool)
    async with pool.connection() as conn:
        await queue.record_outcomes(
            conn,
            "d",
            [
                queue.Outcome(c.id, c.attempt, "failed", response_status=400, error={"m": "x"})
                for c in claimed
            ],
        )
        await request_service.retry_batch(conn, user, batch_id, utcnow())
    assert await _claim(pool, "d", US, pool_name="dedicated") == []
    assert len(await _claim(pool, "d", EU, pool_name="dedicated")) == 2
    # clone: a new batch with the same restriction
    async with pool.connection() as conn:
        clone = await request_service.clone_batch(conn, user, batch_id, utcnow())
    assert clone.metadata is not None and clone.metadata["allowed_locations"] == "eu-*"
    assert await ingest_next(pool, blobs, max_requests=100, now=utcnow) == clone.id
    assert await _claim(pool, "u", US) == []
    assert len(await _claim(pool, "e", EU)) == 2


async def test_the_extension_field_is_stored_canonically_in_the_metadata(
    pool: Pool, tmp_path: Path
) -> None:
    from inferbatch.services import batches as batch_service

    new = batch_service.new_batch(
        Settings(),
        input_file_id="file-x",
        endpoint="/v1/chat/completions",
        completion_window="24h",
        allowed_locations=["eu-central-1", "eu-west-1a", "eu-central-1"],
    )
    assert new.metadata == {"allowed_locations": "eu-central-1,eu-west-1a"}


async def test_live_workers_are_counted_per_location(pool: Pool) -> None:
    async with pool.connection() as conn:
        for i, (p, loc) in enumerate([("spot", EU), ("spot", EU), ("spot", US), ("spot", None)]):
            await registry.register(conn, worker_id=f"w{i}", pool=p, host="h", pid=i, location=loc)
        await registry.register(conn, worker_id="d", pool="dedicated", host="h", pid=9)
        await conn.execute("UPDATE workers SET state = 'stopped' WHERE id = 'w1'")
        counted = await escalation.live_workers_by_location(conn)
        listed = {r["id"]: r["location"] for r in await registry.list_recent(conn)}
    assert counted == {"spot": {EU: 1, US: 1, None: 1}, "dedicated": {None: 1}}
    assert listed["w0"] == EU and listed["d"] is None


async def test_workers_list_the_dashboard_and_metrics_show_locations(
    pool: Pool, db_url: str, tmp_path: Path
) -> None:
    async with pool.connection() as conn:
        root = await users.ensure_user(conn, "root", is_admin=True)
        await users.add_key(conn, root.id, "k-root")
        await registry.register(conn, worker_id="e", pool="spot", host="h", pid=1, location=EU)
        await registry.register(conn, worker_id="n", pool="spot", host="h", pid=2)
        beliefs = {
            EU: {"capacity": 2, "serving": 1, "availability": 0.75, "mean_lifetime_s": 900.0},
            "us-east-1a": {
                "capacity": 8,
                "serving": 0,
                "availability": 1.0,
                "mean_lifetime_s": None,
            },
        }
        await escalation.publish(
            conn,
            {
                location_sets.DESIRED_SPOT_BY_LOCATION: {EU: 3},
                location_sets.SPOT_LOCATIONS: beliefs,
            },
        )
        exported = CollectorRegistry()
        await SystemMetrics(exported).refresh(conn)
    by_location = "inferbatch_workers_by_location"
    assert exported.get_sample_value(by_location, {"pool": "spot", "location": EU}) == 1
    assert exported.get_sample_value(by_location, {"pool": "spot", "location": "none"}) == 1
    assert exported.get_sample_value("inferbatch_desired_spot_workers", {"location": EU}) == 3
    believed = {
        name: [
            exported.get_sample_value(f"inferbatch_spot_location_{what}", {"location": name})
            for what in ("capacity", "availability", "mean_lifetime_seconds")
        ]
        for name in beliefs
    }
    assert believed == {EU: [2.0, 0.75, 900.0], "us-east-1a": [8.0, 1.0, None]}
    assert (
        exported.get_sample_value("inferbatch_desired_dedicated_workers", {"location": EU}) is None
    )
    app = create_app(
        Settings(blob_dir=tmp_path),
        db_url,
        LocalBlobStore(tmp_path),
        EngineRegistry.from_specs({}, timeout=1),
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        listed = await client.get("/v1/workers", headers={"authorization": "Bearer k-root"})
        assert {w["id"]: w["location"] for w in listed.json()["data"]} == {"e": EU, "n": None}
        form = await client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        await client.post(
            "/login", data={"api_key": "k-root", "csrf_token": token.group(1), "next": "/"}
        )
        page = await client.get("/")
    found = re.search(r'data-testid="workers-spot-locations">\s*([^<]+?)\s*<', page.text)
    assert found is not None and found.group(1) == f"{EU} 1 · none 1"


async def test_the_escalate_duty_places_spot_workers_per_location_and_moves_from_a_short_one(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    await _queued(pool, blobs, 40, "placed")
    settings = Settings(
        spot_locations=[
            SpotLocation(name=US, spot_price_ratio=0.2, boot_seconds=0),
            SpotLocation(name=EU, spot_price_ratio=0.35, boot_seconds=0),
        ],
        max_spot_workers=2,
        engine_max_in_flight=4,
        scheduler_tick_seconds=0.1,
    )
    loop = EscalationLoop(settings, pool, policy_by_name("default", settings.escalation))

    async def published() -> dict[str, object]:
        async with pool.connection() as conn:
            return await escalation.published_all(conn)

    await loop.tick()
    state = await published()
    assert state[location_sets.DESIRED_SPOT_BY_LOCATION] == {US: 2, EU: 0}
    assert state[location_sets.DESIRED_DEDICATED_BY_LOCATION] == {US: 0}
    # one of the two asked of the cheap location serves; the other never comes
    async with pool.connection() as conn:
        await registry.register(conn, worker_id="us-1", pool="spot", host="h", pid=1, location=US)
    await loop.tick()
    await asyncio.sleep(0.3)  # past the location's boot grace (1.5 boots plus a tick)
    await loop.tick()
    await loop.tick()
    state = await published()
    assert state[location_sets.DESIRED_SPOT_BY_LOCATION] == {US: 1, EU: 1}
    believed = state[location_sets.SPOT_LOCATIONS]
    assert isinstance(believed, dict)
    assert believed[US]["capacity"] == 1 and believed[US]["serving"] == 1
    assert believed[EU]["capacity"] == 2


async def test_without_locations_the_duty_publishes_nothing_per_location(
    pool: Pool, tmp_path: Path
) -> None:
    await _queued(pool, LocalBlobStore(tmp_path), 4, "single")
    settings = Settings(engine_max_in_flight=4)
    loop = EscalationLoop(settings, pool, policy_by_name("default", settings.escalation))
    async with pool.connection() as conn:
        await registry.register(conn, worker_id="plain", pool="spot", host="h", pid=1)
    await loop.tick()
    async with pool.connection() as conn:
        state = await escalation.published_all(conn)
    assert location_sets.DESIRED_SPOT_BY_LOCATION not in state
    assert escalation.DESIRED_DEDICATED in state
