"""SLA escalation against real PostgreSQL: the policy's moves, the per-request rules, and
the published desired dedicated worker count."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import escalation as rows
from inferbatch.db import requests as queue
from inferbatch.db import workers as registry
from inferbatch.db.types import Pool
from inferbatch.policy.escalation import policy_by_name
from inferbatch.scheduler.escalate import MIN_SAMPLES, EscalationLoop
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.scheduler.leadership import Leadership
from inferbatch.scheduler.service import Scheduler
from tests.helpers import chat_file
from tests.integration.fixtures import (
    finish_queued,
    fold_counters,
    make_batch,
    make_user,
    utcnow,
)

pytestmark = pytest.mark.integration


async def _batch(pool: Pool, tmp_path: Path, n: int, window: str) -> str:
    blobs = LocalBlobStore(tmp_path)
    user = await make_user(pool)
    batch = await make_batch(
        pool,
        blobs,
        user,
        chat_file(n),
        window=window,
        settings=Settings(min_completion_window="1s"),
    )
    await ingest_next(pool, blobs, max_requests=10_000, now=utcnow)
    return batch.id


async def _pools(pool: Pool) -> dict[str, int]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT pool, count(*) AS n FROM requests GROUP BY pool")
        return {r["pool"]: r["n"] for r in await cur.fetchall()}


def _loop(pool: Pool, policy: str = "default") -> EscalationLoop:
    settings = Settings(
        engine_max_in_flight=4,
        dedicated_cold_start_seconds=60,
        max_dedicated_workers=10,
        scheduler_tick_seconds=1,
    )
    return EscalationLoop(settings, pool, policy_by_name(policy, settings.escalation))


async def _finish_some(pool: Pool, seconds: float, n: int = MIN_SAMPLES) -> None:
    """Give the loop a measured service time: ``n`` requests that ran ``seconds`` each."""
    await finish_queued(pool, n, seconds)


async def test_ample_slack_stays_on_spot(pool: Pool, tmp_path: Path) -> None:
    await _batch(pool, tmp_path, 200, "7d")
    await _finish_some(pool, 1.0)
    decision = await _loop(pool).tick()
    assert dict(decision.moves) == {} or not any(decision.moves.values())
    assert await _pools(pool) == {"spot": 200}


async def test_a_deadline_out_of_reach_on_spot_moves_work_to_dedicated(
    pool: Pool, tmp_path: Path
) -> None:
    batch_id = await _batch(pool, tmp_path, 400, "2m")
    await _finish_some(pool, 20.0)  # 400 x 20 s / 4 slots = 2,000 worker-seconds in 2 minutes
    loop = _loop(pool)
    decision = await loop.tick()
    pools = await _pools(pool)
    assert decision.moves.get(batch_id, 0) > 0 and pools.get("dedicated", 0) > 0
    assert decision.dedicated_workers_desired > 0
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n, min(escalation_reason) AS reason FROM requests "
            "WHERE pool = 'dedicated' AND escalated_at IS NOT NULL"
        )
        moved = await cur.fetchone()
    await fold_counters(pool)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT escalated_count FROM batches")
        counted = await cur.fetchone()
        assert await rows.published(conn, rows.DESIRED_DEDICATED) >= 1
    assert moved is not None and moved["n"] == pools["dedicated"] and moved["reason"]
    assert counted == {"escalated_count": pools["dedicated"]}


async def test_service_times_start_from_the_prior_until_enough_finished(
    pool: Pool, tmp_path: Path
) -> None:
    await _batch(pool, tmp_path, 100, "1h")
    loop = _loop(pool)
    prior, timeout = loop.settings.service_seconds_prior, loop.settings.engine_timeout_seconds
    await _finish_some(pool, 2.0, n=MIN_SAMPLES - 1)
    async with pool.connection() as conn:
        times = await rows.service_times(conn)
    assert times["sim-model"][2] == MIN_SAMPLES - 1
    # a small sample is biased (the short requests finish first): the prior still holds
    assert loop.service("sim-model", times) == (prior, timeout)
    await _finish_some(pool, 2.0, n=MIN_SAMPLES)
    async with pool.connection() as conn:
        times = await rows.service_times(conn)
    assert loop.service("sim-model", times) == pytest.approx((2.0, 2.0), abs=0.1)
    # a model with no measurement of its own borrows the measurement over all models
    assert loop.service("other-model", times) == pytest.approx((2.0, 2.0), abs=0.1)


async def test_spot_only_never_moves_anything(pool: Pool, tmp_path: Path) -> None:
    await _batch(pool, tmp_path, 400, "2m")
    await _finish_some(pool, 20.0)
    await _loop(pool, "spot-only").tick()
    assert "dedicated" not in await _pools(pool)


async def test_a_request_lost_twice_on_spot_moves_to_dedicated(
    pool: Pool, tmp_path: Path, db_url: str
) -> None:
    await _batch(pool, tmp_path, 1, "1h")
    scheduler = Scheduler(Settings(), pool, LocalBlobStore(tmp_path), Leadership(db_url))
    for round_ in range(2):
        async with pool.connection() as conn:
            # "w" never beats: its requests are lost on spot, counted as interruptions
            await queue.claim(conn, pool="spot", owner="w", n=1)
        await scheduler.rescue()
        assert await _pools(pool) == ({"spot": 1} if round_ == 0 else {"dedicated": 1})
    async with pool.connection() as conn:
        assert await queue.claim(conn, pool="spot", owner="w", n=1) == []
        [again] = await queue.claim(conn, pool="dedicated", owner="d", n=1)
        cur = await conn.execute("SELECT escalation_reason FROM requests")
        row = await cur.fetchone()
    assert again.pool == "dedicated" and again.interruptions == 2
    assert row is not None and "interrupted on spot 2 times" in row["escalation_reason"]


async def test_escalated_requests_go_back_to_spot_while_no_dedicated_worker_runs(
    pool: Pool, tmp_path: Path
) -> None:
    """A request escalated on a relaxed batch is not left waiting for a dedicated worker
    nobody starts: the next tick sends it back to spot, which a live spot worker serves;
    while a dedicated worker is up it stays for that worker."""
    batch_id = await _batch(pool, tmp_path, MIN_SAMPLES + 3, "7d")
    await _finish_some(pool, 1.0)
    reason = "retry after 1 failed attempts (limit 1)"
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id FROM requests WHERE status = 'queued' ORDER BY id LIMIT 2"
        )
        retried = [queue.Requeue(r["id"], escalate=reason) for r in await cur.fetchall()]
        assert (await queue.requeue(conn, ("queued",), retried)).escalated == {reason: 2}
        for worker_id, kind in (("d", "dedicated"), ("s", "spot")):
            await registry.register(conn, worker_id=worker_id, pool=kind, host="h", pid=1)
            await registry.heartbeat(conn, worker_id, state="running", in_flight=0)
    loop = _loop(pool)
    decision = await loop.tick()
    assert dict(decision.returns) == {} and await _pools(pool) == {
        "spot": MIN_SAMPLES + 1,
        "dedicated": 2,
    }
    async with pool.connection() as conn:
        await conn.execute("UPDATE workers SET state = 'stopped' WHERE id = 'd'")
    decision = await loop.tick()
    assert dict(decision.returns) == {batch_id: 2}
    assert await _pools(pool) == {"spot": MIN_SAMPLES + 3}
    async with pool.connection() as conn:
        claimed = await queue.claim(conn, pool="spot", owner="s", n=10)
        cur = await conn.execute(
            "SELECT count(*) AS n FROM requests WHERE escalation_reason = %s", (reason,)
        )
        remembered = await cur.fetchone()
    assert len(claimed) == 3
    assert remembered == {"n": 2}  # still on record as escalated once
