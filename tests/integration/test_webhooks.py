"""Webhooks on real PostgreSQL: events are written in the transaction that finishes the
batch, deliveries go to a real local HTTP receiver with Standard Webhooks signatures,
retried on the backoff schedule with the same ``webhook-id``, sent once per attempt by
concurrent duties, and stopped when their endpoint is deleted; a secret rotation signs with
both secrets for 24 hours when asked to and with the new one alone otherwise; a test event
is sent at once under the same rules; ``updated_at`` follows real changes only."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import standardwebhooks
from alembic import command
from alembic.config import Config

from inferbatch.blobstore import LocalBlobStore
from inferbatch.config import Settings
from inferbatch.db import batches
from inferbatch.db import requests as queue
from inferbatch.db import webhooks as rows
from inferbatch.db.connector import MIGRATIONS_DIR
from inferbatch.db.requests import Outcome
from inferbatch.db.types import Pool
from inferbatch.domain import BatchRecord, Principal, WebhookDelivery
from inferbatch.engines.local import free_port
from inferbatch.errors import BadGateway, InvalidRequest, NotFound
from inferbatch.ids import new_id
from inferbatch.protocol.webhooks import (
    EVENT_TYPES,
    TEST_BATCH_ID,
    WebhookEndpointCreate,
    WebhookEndpointUpdate,
)
from inferbatch.scheduler.deliver import LEASE_SECONDS, RETRY_SCHEDULE, Deliverer
from inferbatch.scheduler.finalize import finish_ready
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import requests as request_service
from inferbatch.services import webhooks as webhook_service
from tests.helpers import chat_file
from tests.integration.fixtures import make_file, make_project, make_user, utcnow
from tests.webhook_receiver import Received, Receiver, receiving

pytestmark = pytest.mark.integration

ALLOW = Settings(webhook_allow_private=True)
STRICT = Settings()
RETENTION = timedelta(days=30)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.t = start

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


async def _batch(
    pool: Pool,
    blobs: LocalBlobStore,
    user: Principal,
    content: bytes,
    *,
    callback_url: str | None = None,
    callback_secret: str | None = None,
) -> BatchRecord:
    """A batch, ingested (in_progress, or failed for an invalid file)."""
    file_id = await make_file(pool, blobs, user, content)
    now = utcnow()
    async with pool.connection() as conn:
        batch = await batches.insert(
            conn,
            batch_id=new_id("batch_"),
            owner_id=user.id,
            project_id=user.project_id,
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            deadline_at=now + timedelta(hours=24),
            created_at=now,
            priority=1,
            dedup_scope="off",
            metadata=None,
            output_expires_seconds=None,
            callback_url=callback_url,
            callback_secret=callback_secret,
        )
    assert await ingest_next(pool, blobs, max_requests=1000, now=utcnow) == batch.id
    return batch


async def _complete(pool: Pool, blobs: LocalBlobStore, n: int, status: int = 200) -> None:
    """Claim ``n`` requests, answer them all with ``status`` and finish what is ready."""
    async with pool.connection() as conn:
        claimed = await queue.claim(conn, pool="spot", owner="w", n=n)
    async with pool.connection() as conn:
        await queue.record_outcomes(
            conn,
            "w",
            [
                Outcome(
                    c.id,
                    c.attempt,
                    "completed" if status < 300 else "failed",
                    response_status=status,
                    response_body={"ok": status < 300},
                )
                for c in claimed
            ],
        )
    await finish_ready(pool, blobs, retention=RETENTION, now=utcnow)


async def _endpoint(
    pool: Pool,
    user: Principal,
    url: str,
    event_types: list[str] | None = None,
    now: datetime | None = None,
) -> tuple[str, str]:
    """(endpoint id, secret) of a new endpoint for ``event_types`` (default all)."""
    body = {"name": url, "url": url, "event_types": event_types or list(EVENT_TYPES)}
    async with pool.connection() as conn:
        created = await webhook_service.create(
            conn, user, WebhookEndpointCreate.model_validate(body), ALLOW, now or utcnow()
        )
    return created.id, created.signing_secret


async def _deliveries(pool: Pool, batch_id: str) -> list[WebhookDelivery]:
    async with pool.connection() as conn:
        return await rows.deliveries_of_batch(conn, batch_id)


def _deliverer(pool: Pool, clock: Clock, owner: str = "duty-a") -> Deliverer:
    return Deliverer(pool, allow_private=True, now=clock, owner=owner)


async def test_finishing_a_batch_queues_one_delivery_per_matching_endpoint_and_callback(
    pool: Pool, tmp_path: Path, receiver: Receiver
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool, "alice")
    carol = await make_user(pool, "carol")  # alice's fellow member: her endpoints count
    bob = await make_user(pool, "bob", project_id=await make_project(pool))
    everything, _ = await _endpoint(pool, carol, receiver.url + "/all")
    completed_only, _ = await _endpoint(pool, alice, receiver.url + "/c", ["batch.completed"])
    await _endpoint(pool, alice, receiver.url + "/f", ["batch.failed"])
    await _endpoint(pool, bob, receiver.url + "/bob")
    callback_secret = webhook_service.new_secret()
    batch = await _batch(
        pool,
        blobs,
        alice,
        chat_file(2),
        callback_url=receiver.url + "/callback",
        callback_secret=callback_secret,
    )
    assert await _deliveries(pool, batch.id) == []
    await _complete(pool, blobs, 2)

    found = await _deliveries(pool, batch.id)
    assert sorted(str(d.endpoint_id) for d in found) == sorted([everything, completed_only, "None"])
    assert {d.event_type for d in found} == {"batch.completed"}
    assert len({d.event_id for d in found}) == 1  # one event, several targets
    assert all(d.status == "pending" and d.attempts == 0 for d in found)

    await _deliverer(pool, Clock(utcnow() + timedelta(seconds=1))).tick()
    assert sorted(r.path for r in receiver.requests()) == ["/all", "/c", "/callback"]
    [callback] = receiver.requests("/callback")
    event = standardwebhooks.Webhook(callback_secret).verify(callback.body, callback.headers)
    assert event["data"] == {"id": batch.id} and event["type"] == "batch.completed"


async def test_a_rolled_back_finish_leaves_no_delivery(
    pool: Pool, tmp_path: Path, receiver: Receiver
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool)
    await _endpoint(pool, alice, receiver.url + "/hook")
    batch = await _batch(pool, blobs, alice, chat_file(1))

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        async with pool.connection() as conn, conn.transaction():
            assert await batches.request_cancel(conn, batch.id, utcnow())
            assert await batches.mark_finished(
                conn,
                batch.id,
                status="cancelled",
                now=utcnow(),
                output_file_id=None,
                error_file_id=None,
                counts=(1, 0, 1),
                tokens=(0, 0, 0, 0),
            )
            assert len(await rows.deliveries_of_batch(conn, batch.id)) == 1
            raise Crash()
    async with pool.connection() as conn:
        still = await batches.get(conn, batch.id, None)
    assert still is not None and still.status == "in_progress"
    assert await _deliveries(pool, batch.id) == []


async def test_an_invalid_input_file_sends_batch_failed(
    pool: Pool, tmp_path: Path, receiver: Receiver
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool)
    _, secret = await _endpoint(pool, alice, receiver.url + "/hook")
    batch = await _batch(pool, blobs, alice, b"not json\n")
    [delivery] = await _deliveries(pool, batch.id)
    assert delivery.event_type == "batch.failed"

    clock = Clock(utcnow())
    await _deliverer(pool, clock).tick()
    [got] = receiver.requests("/hook")
    event = standardwebhooks.Webhook(secret).verify(got.body, got.headers)
    assert event["type"] == "batch.failed" and event["data"] == {"id": batch.id}
    assert got.headers["webhook-id"] == delivery.event_id == event["id"]


async def test_failed_attempts_are_retried_on_the_schedule_with_the_same_webhook_id(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool)
    with receiving(script=[500, 503, 302]) as receiver:
        endpoint_id, secret = await _endpoint(pool, alice, receiver.url + "/hook")
        batch = await _batch(pool, blobs, alice, chat_file(1))
        await _complete(pool, blobs, 1)
        [queued] = await _deliveries(pool, batch.id)
        clock = Clock(queued.next_attempt_at)
        duty = _deliverer(pool, clock)

        for attempt, wait in enumerate(RETRY_SCHEDULE[:3], start=1):
            await duty.tick()
            assert len(receiver.requests("/hook")) == attempt
            [row] = await _deliveries(pool, batch.id)
            assert (row.status, row.attempts) == ("pending", attempt)
            assert row.next_attempt_at == clock.t + wait
            assert row.last_error is not None
            clock.t += wait - timedelta(seconds=1)
            await duty.tick()  # not due yet
            assert len(receiver.requests("/hook")) == attempt
            clock.t += timedelta(seconds=1)
        await duty.tick()

        got = receiver.requests("/hook")
        assert len(got) == 4
        assert receiver.requests("/redirected") == []  # a redirect is never followed
        assert {g.headers["webhook-id"] for g in got} == {queued.event_id}
        assert {g.body for g in got} == {got[0].body}
        verifier = standardwebhooks.Webhook(secret)
        for g in got:
            assert verifier.verify(g.body, g.headers)["data"] == {"id": batch.id}
        [row] = await _deliveries(pool, batch.id)
        assert (row.status, row.attempts, row.last_response_status) == ("delivered", 4, 200)
        assert row.last_error is None and row.finished_at is not None

        async with pool.connection() as conn:
            page, more = await webhook_service.deliveries(
                conn, alice, endpoint_id, after=None, limit=10
            )
        assert [d.id for d in page] == [row.id] and not more


async def test_a_delivery_fails_after_the_last_scheduled_attempt(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool)
    with receiving(default=500) as receiver:
        await _endpoint(pool, alice, receiver.url + "/hook")
        batch = await _batch(pool, blobs, alice, chat_file(1))
        await _complete(pool, blobs, 1)
        [queued] = await _deliveries(pool, batch.id)
        clock = Clock(queued.next_attempt_at)
        duty = _deliverer(pool, clock)
        for wait in [*RETRY_SCHEDULE, timedelta(0)]:
            await duty.tick()
            clock.t += wait
        clock.t += timedelta(days=2)
        await duty.tick()
        assert len(receiver.requests("/hook")) == len(RETRY_SCHEDULE) + 1
    [row] = await _deliveries(pool, batch.id)
    assert (row.status, row.attempts, row.last_response_status) == (
        "failed",
        len(RETRY_SCHEDULE) + 1,
        500,
    )
    assert row.last_error is not None and row.last_error.startswith("HTTP 500")
    assert row.finished_at is not None


async def test_deliveries_claimed_by_two_duties_at_once_are_sent_once_each(
    pool: Pool, tmp_path: Path, receiver: Receiver
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool)
    endpoints = [
        await _endpoint(pool, alice, f"{receiver.url}/hook/{i}")
        for i in range(webhook_service.MAX_ENDPOINTS_PER_USER)
    ]
    batch_ids = []
    for _ in range(3):
        batch = await _batch(pool, blobs, alice, chat_file(1))
        await _complete(pool, blobs, 1)
        batch_ids.append(batch.id)
    clock = Clock(utcnow() + timedelta(seconds=1))
    one, two = _deliverer(pool, clock, "duty-a"), _deliverer(pool, clock, "duty-b")
    while True:
        more = await asyncio.gather(one.tick(), two.tick())
        if not any(more):
            break
    await asyncio.gather(one.tick(), two.tick())
    got = receiver.requests()
    expected = len(endpoints) * len(batch_ids)
    assert len(got) == expected
    assert len({(g.path, g.headers["webhook-id"]) for g in got}) == expected
    for batch_id in batch_ids:
        found = await _deliveries(pool, batch_id)
        assert {(d.status, d.attempts) for d in found} == {("delivered", 1)}


async def test_a_duty_that_died_mid_send_leaves_the_delivery_due_after_its_lease(
    pool: Pool, tmp_path: Path, receiver: Receiver
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool)
    await _endpoint(pool, alice, receiver.url + "/hook")
    batch = await _batch(pool, blobs, alice, chat_file(1))
    await _complete(pool, blobs, 1)
    [queued] = await _deliveries(pool, batch.id)
    clock = Clock(queued.next_attempt_at)
    async with pool.connection() as conn:  # claimed by a duty that then vanished
        [claimed] = await rows.claim(
            conn, owner="dead", n=10, now=clock.t, lease_seconds=LEASE_SECONDS
        )
    duty = _deliverer(pool, clock)
    assert not await duty.tick() and receiver.requests() == []
    clock.t += timedelta(seconds=LEASE_SECONDS)
    await duty.tick()
    [got] = receiver.requests("/hook")
    assert got.headers["webhook-id"] == claimed.event_id
    [row] = await _deliveries(pool, batch.id)
    assert (row.status, row.attempts) == ("delivered", 2)
    async with pool.connection() as conn:  # the dead duty's late write is fenced out
        late = rows.Attempt(claimed.id, claimed.attempt, "failed", error="late")
        assert not await rows.record_attempt(conn, "dead", late, clock.t)


async def test_deleting_an_endpoint_stops_its_pending_deliveries(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool)
    with receiving(default=500) as receiver:
        endpoint_id, _ = await _endpoint(pool, alice, receiver.url + "/hook")
        kept_id, _ = await _endpoint(pool, alice, receiver.url + "/kept")
        batch = await _batch(pool, blobs, alice, chat_file(1))
        await _complete(pool, blobs, 1)
        clock = Clock(utcnow() + timedelta(seconds=1))
        duty = _deliverer(pool, clock)
        await duty.tick()
        assert len(receiver.requests("/hook")) == 1
        async with pool.connection() as conn:
            await webhook_service.delete(conn, alice, endpoint_id)
        clock.t += timedelta(days=3)
        for _ in range(3):
            await duty.tick()
            clock.t += timedelta(days=1)
        assert len(receiver.requests("/hook")) == 1
        assert len(receiver.requests("/kept")) > 1
    assert [d.endpoint_id for d in await _deliveries(pool, batch.id)] == [kept_id]


async def test_a_batch_reopened_by_retry_sends_a_new_event_when_it_finishes_again(
    pool: Pool, tmp_path: Path, receiver: Receiver
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool)
    await _endpoint(pool, alice, receiver.url + "/hook")
    batch = await _batch(pool, blobs, alice, chat_file(1))
    await _complete(pool, blobs, 1, status=400)  # completed, with a failed request
    async with pool.connection() as conn:
        await request_service.retry_batch(conn, alice, batch.id, utcnow())
    await _complete(pool, blobs, 1)
    found = await _deliveries(pool, batch.id)
    assert [d.event_type for d in found] == ["batch.completed", "batch.completed"]
    assert found[0].event_id != found[1].event_id


async def test_the_send_time_check_refuses_a_private_address_without_sending(
    pool: Pool, tmp_path: Path, receiver: Receiver
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool)
    await _endpoint(pool, alice, receiver.url + "/literal")  # registered while allowed
    await _endpoint(pool, alice, f"http://localhost:{receiver.port}/name")
    batch = await _batch(pool, blobs, alice, chat_file(1))
    await _complete(pool, blobs, 1)
    clock = Clock(utcnow() + timedelta(seconds=1))
    strict = Deliverer(pool, allow_private=False, now=clock, owner="strict")
    try:
        await strict.tick()
    finally:
        await strict.aclose()
    assert receiver.requests() == []
    found = await _deliveries(pool, batch.id)
    assert {d.status for d in found} == {"pending"}
    for d in found:
        assert d.last_error is not None and "public addresses only" in d.last_error, d


def _signatures(headers: dict[str, str]) -> list[str]:
    return headers["webhook-signature"].split(" ")


def _verifies(secret: str, got: Received) -> bool:
    try:
        standardwebhooks.Webhook(secret).verify(got.body, got.headers)
    except standardwebhooks.WebhookVerificationError:
        return False
    return True


async def _rotate(
    pool: Pool, user: Principal, endpoint_id: str, keep_old: bool, now: datetime
) -> str:
    async with pool.connection() as conn:
        rotated = await webhook_service.rotate_secret(
            conn, user, endpoint_id, keep_old=keep_old, now=now
        )
    return rotated.signing_secret


async def test_a_rotation_that_keeps_the_old_secret_signs_with_both_for_24_hours(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool)
    with receiving(default=500) as receiver:
        endpoint_id, old = await _endpoint(pool, alice, receiver.url + "/hook")
        batch = await _batch(pool, blobs, alice, chat_file(1))
        await _complete(pool, blobs, 1)
        [queued] = await _deliveries(pool, batch.id)
        clock = Clock(queued.next_attempt_at)
        new = await _rotate(pool, alice, endpoint_id, True, clock.t)
        assert new != old
        duty = _deliverer(pool, clock)
        await duty.tick()
        [during] = receiver.requests("/hook")
        assert len(_signatures(during.headers)) == 2
        assert _verifies(old, during) and _verifies(new, during)

        clock.t += webhook_service.ROTATION_GRACE  # the old secret's last moment has passed
        await duty.tick()
        after = receiver.requests("/hook")[1]
        assert after.headers["webhook-id"] == during.headers["webhook-id"]
        assert len(_signatures(after.headers)) == 1
        assert _verifies(new, after) and not _verifies(old, after)
    async with pool.connection() as conn:
        endpoint = await webhook_service.get(conn, alice, endpoint_id)
    assert endpoint.previous_secret_expires_at == queued.next_attempt_at + timedelta(hours=24)


async def test_a_rotation_without_grace_stops_the_old_secret_at_once_pending_retries_too(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool)
    with receiving(script=[500]) as receiver:
        endpoint_id, old = await _endpoint(pool, alice, receiver.url + "/hook")
        batch = await _batch(pool, blobs, alice, chat_file(1))
        await _complete(pool, blobs, 1)
        [queued] = await _deliveries(pool, batch.id)
        clock = Clock(queued.next_attempt_at)
        duty = _deliverer(pool, clock)
        await duty.tick()  # answered 500: retried in 5 s
        first = receiver.requests("/hook")[0]
        assert _verifies(old, first)
        # a rotation with grace, then one without: neither earlier secret signs any more
        middle = await _rotate(pool, alice, endpoint_id, True, clock.t)
        new = await _rotate(pool, alice, endpoint_id, False, clock.t)
        clock.t += RETRY_SCHEDULE[0]
        await duty.tick()
        retry = receiver.requests("/hook")[1]
        assert len(_signatures(retry.headers)) == 1
        assert _verifies(new, retry)
        assert not _verifies(old, retry) and not _verifies(middle, retry)
    [row] = await _deliveries(pool, batch.id)
    assert (row.status, row.attempts) == ("delivered", 2)


async def test_updated_at_moves_only_when_the_endpoint_or_its_secret_changes(
    pool: Pool, receiver: Receiver
) -> None:
    alice = await make_user(pool)
    t0 = utcnow()
    endpoint_id, _ = await _endpoint(pool, alice, receiver.url + "/a", ["batch.failed"], now=t0)

    async def update(at: datetime, **fields: object) -> tuple[datetime, tuple[str, ...], str]:
        async with pool.connection() as conn:
            e = await webhook_service.update(
                conn, alice, endpoint_id, WebhookEndpointUpdate.model_validate(fields), ALLOW, at
            )
        return e.updated_at, e.event_types, e.name

    same = {"name": receiver.url + "/a", "event_types": ["batch.failed"]}
    assert await update(t0 + timedelta(minutes=1), **same) == (
        t0,
        ("batch.failed",),
        receiver.url + "/a",
    )
    assert (await update(t0 + timedelta(minutes=2)))[0] == t0  # nothing given
    t3 = t0 + timedelta(minutes=3)
    # the complete new set, in the API's order, duplicates dropped
    types = ["batch.cancelled", "batch.completed", "batch.cancelled"]
    assert await update(t3, event_types=types) == (
        t3,
        ("batch.completed", "batch.cancelled"),
        receiver.url + "/a",
    )
    t4 = t0 + timedelta(minutes=4)
    assert await update(t4, name="renamed") == (
        t4,
        ("batch.completed", "batch.cancelled"),
        "renamed",
    )
    t5 = t0 + timedelta(minutes=5)
    await _rotate(pool, alice, endpoint_id, False, t5)
    async with pool.connection() as conn:
        assert (await webhook_service.get(conn, alice, endpoint_id)).updated_at == t5
        with pytest.raises(InvalidRequest) as refused:  # a new URL is checked like a new one
            await webhook_service.update(
                conn,
                alice,
                endpoint_id,
                WebhookEndpointUpdate(url=receiver.url + "/b"),
                STRICT,
                t5 + timedelta(minutes=1),
            )
        assert refused.value.param == "url"
        unchanged = await webhook_service.get(conn, alice, endpoint_id)
    assert (unchanged.url, unchanged.updated_at) == (receiver.url + "/a", t5)


async def test_a_test_event_is_sent_now_signed_and_answers_the_receivers_status(
    pool: Pool,
) -> None:
    alice = await make_user(pool)
    with receiving(script=[503]) as receiver:
        endpoint_id, old = await _endpoint(pool, alice, receiver.url + "/hook")
        new = await _rotate(pool, alice, endpoint_id, True, utcnow())
        async with pool.connection() as conn:
            before = await webhook_service.get(conn, alice, endpoint_id)
        result = await webhook_service.send_test(
            pool, alice, endpoint_id, "batch.expired", ALLOW, utcnow()
        )
        assert (result.status_code, result.success, result.event_type) == (
            503,
            True,
            "batch.expired",
        )
        assert result.webhook_endpoint_id == endpoint_id
        [got] = receiver.requests("/hook")
    assert _verifies(old, got) and _verifies(new, got)
    event = standardwebhooks.Webhook(new).verify(got.body, got.headers)
    assert event["type"] == "batch.expired" and event["data"] == {"id": TEST_BATCH_ID}
    assert got.headers["webhook-id"] == event["id"] and event["id"].startswith("evt_")
    async with pool.connection() as conn:
        after = await webhook_service.get(conn, alice, endpoint_id)
        assert await rows.recent_deliveries(conn, None, limit=10) == []  # nothing recorded
    assert after.updated_at == before.updated_at
    bob = await make_user(pool, "bob", project_id=await make_project(pool))
    with pytest.raises(NotFound):  # another project's endpoint
        await webhook_service.send_test(pool, bob, endpoint_id, "batch.failed", ALLOW, utcnow())


async def test_a_test_event_to_a_refused_or_silent_address_is_an_error(
    pool: Pool, receiver: Receiver
) -> None:
    alice = await make_user(pool)
    private_id, _ = await _endpoint(pool, alice, receiver.url + "/hook")  # registered while allowed
    with pytest.raises(InvalidRequest) as refused:
        await webhook_service.send_test(pool, alice, private_id, "batch.failed", STRICT, utcnow())
    assert refused.value.param == "url" and "public addresses only" in refused.value.message
    assert receiver.requests() == []

    silent_id, _ = await _endpoint(pool, alice, f"http://127.0.0.1:{free_port()}/nobody")
    with pytest.raises(BadGateway) as silent:
        await webhook_service.send_test(pool, alice, silent_id, "batch.failed", ALLOW, utcnow())
    assert silent.value.status_code == 502 and silent.value.code == "webhook_endpoint_unreachable"
    assert "Could not connect" in silent.value.message


async def test_endpoints_list_newest_first_in_pages_of_their_project_only(
    pool: Pool, receiver: Receiver
) -> None:
    alice = await make_user(pool)
    carol = await make_user(pool, "carol")
    bob = await make_user(pool, "bob", project_id=await make_project(pool))
    t0 = utcnow()
    ids = [
        (
            await _endpoint(
                pool,
                carol if i == 1 else alice,
                f"{receiver.url}/{i}",
                now=t0 + timedelta(seconds=i),
            )
        )[0]
        for i in range(3)
    ]
    bobs, _ = await _endpoint(pool, bob, receiver.url + "/bob", now=t0 + timedelta(seconds=9))
    async with pool.connection() as conn:
        first = await rows.list_endpoints(conn, alice.project_id, after=None, limit=2)
        second = await rows.list_endpoints(conn, alice.project_id, after=first[1].id, limit=2)
        across = await rows.list_endpoints(conn, alice.project_id, after=bobs, limit=2)
        theirs = await rows.list_endpoints(conn, bob.project_id, after=None, limit=10)
        everyone = await rows.list_endpoints(conn, None, after=None, limit=10)
    # carol's endpoint is one of the project's, listed with alice's
    assert [e.id for e in first] == [ids[2], ids[1], ids[0]]  # limit + 1: more follow
    assert [e.id for e in second] == [ids[0]]
    assert across == []  # another project's id is no cursor
    assert [e.id for e in theirs] == [bobs]
    assert [e.id for e in everyone] == [bobs, ids[2], ids[1], ids[0]]


def _alembic(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def test_the_webhooks_migration_downgrades_and_upgrades_again(db_url: str) -> None:
    cfg = _alembic(db_url)
    command.downgrade(cfg, "0008")
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT to_regclass('webhook_deliveries')").fetchone() == (None,)
    command.upgrade(cfg, "0009")
    with psycopg.connect(db_url) as conn:
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'webhook_deliveries'"
            )
        }
    assert any("WHERE (status = 'pending'::text)" in i for i in indexes)
