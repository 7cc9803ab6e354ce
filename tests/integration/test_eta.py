"""Estimated completion and admission against real PostgreSQL: the escalate tick writes
each in-progress batch's estimate (and leaves a steady one alone), uploads count their lines,
and a create that cannot meet its window is refused, warned about or left alone per
``INFERBATCH_ADMISSION``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from inferbatch.blobstore import LocalBlobStore, new_blob_key
from inferbatch.config import Settings
from inferbatch.db import escalation as rows
from inferbatch.db import files, workers
from inferbatch.db.types import Pool
from inferbatch.domain import BatchRecord, Principal
from inferbatch.errors import InvalidRequest
from inferbatch.ids import new_id
from inferbatch.policy import policy_by_name
from inferbatch.scheduler.escalate import MIN_SAMPLES, EscalationLoop
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import batches as batch_service
from inferbatch.services import files as file_service
from inferbatch.services.serialize import batch_object
from tests.helpers import chat_file
from tests.integration.fixtures import finish_queued, make_batch, make_user, utcnow

pytestmark = pytest.mark.integration

SETTINGS = dict(
    engine_max_in_flight=1,
    max_dedicated_workers=1,
    dedicated_cold_start_seconds=60,
    scheduler_tick_seconds=1,
    min_completion_window="1m",
)


def _settings(**extra: Any) -> Settings:
    return Settings(**{**SETTINGS, **extra})


def _loop(pool: Pool, settings: Settings) -> EscalationLoop:
    return EscalationLoop(settings, pool, policy_by_name("default", settings.escalation))


async def _running_batch(pool: Pool, blobs: LocalBlobStore, user: Principal, n: int) -> str:
    batch = await make_batch(pool, blobs, user, chat_file(n), window="7d", settings=_settings())
    await ingest_next(pool, blobs, max_requests=10_000, now=utcnow)
    return batch.id


async def _worker(pool: Pool, name: str = "w-spot", kind: str = "spot") -> None:
    async with pool.connection() as conn:
        await workers.register(conn, worker_id=name, pool=kind, host="h", pid=1)


async def _stored(pool: Pool, batch_id: str) -> tuple[datetime | None, str]:
    """The batch's stored estimate and its row version (``xmin``: changes on every write)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT estimated_completion_at, xmin::text AS xmin FROM batches WHERE id = %s",
            (batch_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    return row["estimated_completion_at"], row["xmin"]


async def test_the_tick_writes_each_batch_estimate_and_leaves_a_steady_one_alone(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    batch_id = await _running_batch(pool, blobs, await make_user(pool), 200)
    await finish_queued(pool, MIN_SAMPLES, 10.0)  # measured: 10 s a request
    await _worker(pool)
    loop = _loop(pool, _settings())
    before = datetime.now(UTC)
    await loop.tick()
    eta, version = await _stored(pool, batch_id)
    # 170 requests of 10 s on one slot: 1,700 s and half a request
    assert eta is not None
    assert (eta - before).total_seconds() == pytest.approx(1705, abs=5)
    await loop.tick()
    assert await _stored(pool, batch_id) == (eta, version)  # nothing moved: no write
    await finish_queued(pool, 100, 10.0)  # a hundred fewer requests: 1,000 s sooner
    await loop.tick()
    sooner, rewritten = await _stored(pool, batch_id)
    assert sooner is not None and rewritten != version
    assert (eta - sooner).total_seconds() == pytest.approx(1000, abs=5)
    async with pool.connection() as conn:
        published = await rows.published_all(conn)
    assert published[rows.SERVICE_SECONDS]["sim-model"] == pytest.approx(10.0)


async def test_with_no_worker_up_or_asked_for_the_estimate_is_unknown(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    batch_id = await _running_batch(pool, blobs, await make_user(pool), 20)
    await _worker(pool)
    loop = _loop(pool, _settings())
    await loop.tick()
    assert (await _stored(pool, batch_id))[0] is not None
    async with pool.connection() as conn:
        await conn.execute("UPDATE workers SET state = 'stopped'")
    await loop.tick()  # a 7-day window needs no dedicated worker: nothing is coming
    assert (await _stored(pool, batch_id))[0] is None


async def _upload(pool: Pool, blobs: LocalBlobStore, user: Principal, content: bytes) -> str:
    """Upload ``content`` as a batch file through the file service, a few bytes at a time
    (so lines straddle the chunks), as ``POST /v1/files`` streams it."""
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="in.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    record = await file_service.upload(
        pool,
        blobs,
        Settings(),
        user,
        content_type=f"multipart/form-data; boundary={boundary}",
        content_length=None,
        body=chunks(),
        now=utcnow(),
    )
    return record.id


async def test_an_upload_counts_its_lines_on_the_way_in(pool: Pool, tmp_path: Path) -> None:
    blobs, user = LocalBlobStore(tmp_path), await make_user(pool)
    ended = await _upload(pool, blobs, user, chat_file(25))
    unterminated = await _upload(pool, blobs, user, chat_file(3).rstrip(b"\n"))
    async with pool.connection() as conn:
        counted = [await files.get(conn, f, None) for f in (ended, unterminated)]
    assert [f.line_count if f else None for f in counted] == [25, 3]


async def _counted_file(pool: Pool, user: Principal, lines: int) -> str:
    """A batch input whose upload counted ``lines`` lines (its content is not read here)."""
    async with pool.connection() as conn:
        record = await files.insert(
            conn,
            file_id=new_id("file-"),
            owner_id=user.id,
            purpose="batch",
            filename="in.jsonl",
            size=lines * 100,
            sha256="",
            blob_key=new_blob_key("upload"),
            expires_at=utcnow() + timedelta(days=1),
            line_count=lines,
        )
    return record.id


async def _create(
    pool: Pool, user: Principal, file_id: str, window: str, **extra: Any
) -> BatchRecord:
    new = batch_service.new_batch(
        _settings(**extra),
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window=window,
    )
    async with pool.connection() as conn:
        return await batch_service.create(conn, user, new, utcnow())


async def _measured_fleet(pool: Pool, tmp_path: Path, user: Principal) -> None:
    """A deployment that has measured 60 s a request, with one spot worker of one slot
    (and a dedicated quota of one more, after 60 s)."""
    blobs = LocalBlobStore(tmp_path)
    await _running_batch(pool, blobs, user, MIN_SAMPLES + 1)
    await finish_queued(pool, MIN_SAMPLES, 60.0)
    await _worker(pool)
    await _loop(pool, _settings()).tick()


async def test_reject_refuses_a_window_too_short_and_names_one_that_works(
    pool: Pool, tmp_path: Path
) -> None:
    user = await make_user(pool)
    await _measured_fleet(pool, tmp_path, user)
    # 300 requests of 60 s: 60 s on one slot, then two: about 2.5 hours
    file_id = await _counted_file(pool, user, 300)
    with pytest.raises(InvalidRequest) as refused:
        await _create(pool, user, file_id, "1h", admission="reject")
    assert refused.value.status_code == 400
    envelope = refused.value.envelope()["error"]
    assert envelope["code"] == "window_too_short" and envelope["param"] == "completion_window"
    assert envelope["type"] == "invalid_request_error"
    assert "after its completion_window of 1h" in refused.value.message
    assert "a completion_window of 3h would work" in refused.value.message
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM batches WHERE input_file_id = %s", (file_id,)
        )
        assert await cur.fetchone() == {"n": 0}
    accepted = await _create(pool, user, file_id, "3h", admission="reject")
    assert accepted.warnings is None and accepted.estimated_completion_at is not None
    left = (accepted.estimated_completion_at - accepted.created_at).total_seconds()
    # the first estimate is for the fleet there is (no dedicated worker asked for): one slot
    assert left == pytest.approx(300 * 60 + 30, abs=5)


async def test_warn_accepts_the_batch_and_records_the_warning(pool: Pool, tmp_path: Path) -> None:
    user = await make_user(pool)
    await _measured_fleet(pool, tmp_path, user)
    batch = await _create(pool, user, await _counted_file(pool, user, 300), "1h", admission="warn")
    assert batch.status == "validating"
    shown = batch_object(batch)
    assert shown.warnings is not None and [w.code for w in shown.warnings] == ["window_too_short"]
    assert "3h would work" in shown.warnings[0].message
    assert shown.estimated_completion_at is not None


async def test_off_never_checks(pool: Pool, tmp_path: Path) -> None:
    user = await make_user(pool)
    await _measured_fleet(pool, tmp_path, user)
    batch = await _create(pool, user, await _counted_file(pool, user, 300), "1h", admission="off")
    assert batch.warnings is None and batch.estimated_completion_at is None


async def test_a_fresh_deployment_only_warns_on_the_prior(pool: Pool) -> None:
    user = await make_user(pool)
    await _worker(pool)
    # nothing measured: 10,000 requests at the prior of 30 s cannot fit in an hour, but
    # the prior is a guess, so even reject only warns
    batch = await _create(
        pool, user, await _counted_file(pool, user, 10_000), "1h", admission="reject"
    )
    assert batch.warnings is not None
    assert "no request has been measured yet" in batch.warnings[0]["message"]


async def test_work_queued_ahead_delays_a_new_batch(pool: Pool, tmp_path: Path) -> None:
    user = await make_user(pool)
    await _measured_fleet(pool, tmp_path, user)
    alone = await _create(pool, user, await _counted_file(pool, user, 10), "1h")
    assert alone.estimated_completion_at is not None and alone.warnings is None
    # a high-priority batch of 100 requests is ahead of whatever comes next
    big = await _counted_file(pool, user, 100)
    new = batch_service.new_batch(
        _settings(),
        input_file_id=big,
        endpoint="/v1/chat/completions",
        completion_window="7d",
        metadata={"priority": "10"},
    )
    async with pool.connection() as conn:
        await batch_service.create(conn, user, new, utcnow())
    behind = await _create(pool, user, await _counted_file(pool, user, 10), "1h")
    assert behind.estimated_completion_at is not None
    delay = (behind.estimated_completion_at - alone.estimated_completion_at).total_seconds()
    # the first small batch (validating, its 10 lines) and the big one's 100 lines: 110 x 60 s
    assert delay == pytest.approx(110 * 60, abs=10)
    assert behind.warnings is not None  # 2 hours of work ahead of a 1-hour window
