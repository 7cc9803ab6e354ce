"""The portal's SQL (db/browse.py) on real PostgreSQL: the batch list's filters, sorts and
keyset pages (and that they walk indexes at 100,000 batches), dashboard statistics,
activity buckets, latency bins, deadline risk and session keys. Each read is scoped to a
project: another project's batches never show, a fellow member's always do."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from inferbatch.blobstore import LocalBlobStore
from inferbatch.db import browse, users
from inferbatch.db.browse import BatchFilter, Sort
from inferbatch.db.types import Conn, Pool
from inferbatch.domain import DEFAULT_PROJECT_ID, Principal
from inferbatch.errors import Unauthorized
from inferbatch.scheduler.ingest import ingest_next
from inferbatch.services import projects
from tests.helpers import chat_file
from tests.integration.fixtures import (
    SETTLE_DIRECTLY,
    make_batch,
    make_project,
    make_user,
    utcnow,
)

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
STATUSES = ("completed", "failed", "in_progress", "cancelled", "validating")
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
PRIORITIES = (1, 3, 5, 7, 10, 20)


async def _insert_batch(conn: Conn, owner: Principal, i: int, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": f"batch_t{i:04d}",
        "owner": owner.id,
        "project": owner.project_id,
        "endpoint": ENDPOINTS[i % 2],
        "created_at": T0 + timedelta(minutes=i),
        # deadlines run the other way, so sorting by deadline differs from creation
        "deadline_at": T0 + timedelta(days=2, minutes=-i),
        "priority": PRIORITIES[i % len(PRIORITIES)],
        "status": STATUSES[i % len(STATUSES)],
        "in_progress_at": None,
        "total": 0,
        "completed": 0,
        "failed": 0,
    }
    row.update(over)
    await conn.execute(
        """
        INSERT INTO batches (id, owner_id, project_id, input_file_id, endpoint,
            completion_window, deadline_at, created_at, priority, status, in_progress_at,
            total_count, completed_count, failed_count)
        VALUES (%(id)s, %(owner)s, %(project)s, 'file-x', %(endpoint)s, '24h', %(deadline_at)s,
            %(created_at)s, %(priority)s, %(status)s, %(in_progress_at)s, %(total)s,
            %(completed)s, %(failed)s)
        """,
        row,
    )
    return row


def _expected(rows: list[dict[str, Any]], sort: Sort) -> list[str]:
    keys = {
        "newest": (lambda r: (r["created_at"], r["id"]), True),
        "oldest": (lambda r: (r["created_at"], r["id"]), False),
        "deadline": (lambda r: (r["deadline_at"], r["id"]), False),
        "priority": (lambda r: (r["priority"], r["created_at"], r["id"]), True),
    }
    key, reverse = keys[sort]
    return [r["id"] for r in sorted(rows, key=key, reverse=reverse)]  # type: ignore[no-untyped-call]


async def _walk(
    conn: Conn, project: str | None, f: BatchFilter, sort: Sort, size: int
) -> list[str]:
    """Every page forward, then every page backward from the last one; both must agree."""
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        rows, more = await browse.list_batches(conn, project, f, sort=sort, after=after, limit=size)
        pages.append([r["id"] for r in rows])
        if not more:
            break
        after = rows[-1]["id"]
    back: list[list[str]] = [pages[-1]]
    before = pages[-1][0] if len(pages) > 1 else None
    while before is not None:
        rows, more = await browse.list_batches(
            conn, project, f, sort=sort, before=before, limit=size
        )
        back.insert(0, [r["id"] for r in rows])
        before = rows[0]["id"] if more else None
    assert back == pages
    return list(itertools.chain.from_iterable(pages))


async def test_batch_list_filters_sorts_and_pages_both_ways(pool: Pool) -> None:
    alice = await make_user(pool, "alice")
    carol = await make_user(pool, "carol")  # alice's fellow member of the default project
    bob = await make_user(pool, "bob", project_id=await make_project(pool))
    async with pool.connection() as conn:
        mine = [await _insert_batch(conn, alice if i % 4 else carol, i) for i in range(40)]
        theirs = [await _insert_batch(conn, bob, 100 + i) for i in range(5)]
        everyone = mine + theirs
        for sort in browse.SORTS:
            assert await _walk(conn, alice.project_id, BatchFilter(), sort, 7) == _expected(
                mine, sort
            )
            assert await _walk(conn, bob.project_id, BatchFilter(), sort, 2) == _expected(
                theirs, sort
            )
            assert await _walk(conn, None, BatchFilter(), sort, 9) == _expected(everyone, sort)
        cases: list[tuple[BatchFilter, Any]] = [
            (BatchFilter(status="failed"), lambda r: r["status"] == "failed"),
            (BatchFilter(endpoint=ENDPOINTS[1]), lambda r: r["endpoint"] == ENDPOINTS[1]),
            (BatchFilter(priority="normal"), lambda r: r["priority"] < 5),
            (BatchFilter(priority="medium"), lambda r: 5 <= r["priority"] < 10),
            (BatchFilter(priority="high"), lambda r: r["priority"] >= 10),
            (
                BatchFilter(
                    created_from=T0 + timedelta(minutes=10),
                    created_before=T0 + timedelta(minutes=20),
                ),
                lambda r: (
                    T0 + timedelta(minutes=10) <= r["created_at"] < T0 + timedelta(minutes=20)
                ),
            ),
            (
                BatchFilter(status="completed", priority="high", endpoint=ENDPOINTS[0]),
                lambda r: (
                    r["status"] == "completed"
                    and r["priority"] >= 10
                    and r["endpoint"] == ENDPOINTS[0]
                ),
            ),
        ]
        for f, keep in cases:
            wanted = [r for r in mine if keep(r)]
            assert wanted, f
            assert await _walk(conn, alice.project_id, f, "priority", 3) == _expected(
                wanted, "priority"
            )
            assert await browse.count_batches(conn, alice.project_id, f) == len(wanted)
        assert await browse.count_batches(conn, None, BatchFilter(), cap=10) == 11
        first, _ = await browse.list_batches(conn, None, BatchFilter(), limit=1)
        assert first[0]["owner_name"] == "bob" and first[0]["total_count"] == 0
        assert await browse.batch_status_counts(conn, bob.project_id) == {
            s: sum(1 for r in theirs if r["status"] == s) for s in {r["status"] for r in theirs}
        }


async def test_batch_list_pages_walk_indexes_at_100k_batches(pool: Pool) -> None:
    alice = await make_user(pool, "alice")
    bob = await make_user(pool, "bob", project_id=await make_project(pool))
    async with pool.connection() as conn:
        await conn.execute(
            """
            INSERT INTO batches (id, owner_id, project_id, input_file_id, endpoint,
                completion_window, deadline_at, created_at, priority, status)
            SELECT 'batch_bulk_' || lpad(i::text, 6, '0'),
                CASE WHEN i %% 10 = 0 THEN %(bob)s ELSE %(alice)s END,
                CASE WHEN i %% 10 = 0 THEN %(bob_project)s ELSE %(alice_project)s END, 'file-x',
                (ARRAY['/v1/chat/completions', '/v1/completions', '/v1/embeddings'])[1 + i %% 3],
                '24h', %(t0)s + i * interval '1 second' + interval '1 day' - (i %% 97) * interval
                '1 minute', %(t0)s + i * interval '1 second', (ARRAY[1, 1, 1, 5, 10])[1 + i %% 5],
                (ARRAY['completed', 'completed', 'completed', 'failed', 'in_progress',
                       'cancelled', 'expired'])[1 + i %% 7]
            FROM generate_series(1, 100000) i
            """,
            {
                "alice": alice.id,
                "bob": bob.id,
                "alice_project": alice.project_id,
                "bob_project": bob.project_id,
                "t0": T0,
            },
        )
        await conn.execute("ANALYZE batches")
        probes: list[tuple[str | None, BatchFilter, Sort]] = [
            (None, BatchFilter(), "newest"),
            (None, BatchFilter(), "oldest"),
            (None, BatchFilter(), "deadline"),
            (None, BatchFilter(), "priority"),
            (None, BatchFilter(status="cancelled"), "newest"),
            (alice.project_id, BatchFilter(), "newest"),
            (bob.project_id, BatchFilter(status="failed"), "newest"),
            (None, BatchFilter(priority="high"), "priority"),
        ]
        # every batch of a project here is its one user's
        makers = {alice.project_id: alice.id, bob.project_id: bob.id}
        for project, f, sort in probes:
            rows, more = await browse.list_batches(conn, project, f, sort=sort, limit=50)
            assert len(rows) == 50 and more
            nxt, _ = await browse.list_batches(conn, project, f, sort=sort, after=rows[-1]["id"])
            assert not {r["id"] for r in rows} & {r["id"] for r in nxt}
            if f.status:
                assert {r["status"] for r in rows + nxt} == {f.status}
            if project:
                assert {r["owner_id"] for r in rows + nxt} == {makers[project]}
            query, params = browse.batch_page_query(project, f, sort=sort, after=rows[-1]["id"])
            cur = await conn.execute("EXPLAIN " + query, params)
            plan = "\n".join(str(r["QUERY PLAN"]) for r in await cur.fetchall())
            assert "Seq Scan on batches" not in plan, (project, f, sort, plan)
        assert await browse.count_batches(conn, None, BatchFilter(status="failed")) == 10_001


async def _finish(
    conn: Conn,
    batch_id: str,
    line: int,
    *,
    status: str,
    pool: str,
    finished: datetime,
    took: float,
    tokens: int = 10,
    dedup: bool = False,
) -> None:
    cur = await conn.execute(
        "SELECT id FROM request_inputs WHERE batch_id = %s AND line = %s", (batch_id, line)
    )
    row = await cur.fetchone()
    assert row is not None
    await conn.execute(
        SETTLE_DIRECTLY,
        {
            "ids": [row["id"]],
            "status": status,
            "pool": pool,
            "started": None if dedup else finished - timedelta(seconds=took),
            "finished": finished,
            "dedup_of": 1 if dedup else None,
            "response_status": 200 if status == "completed" else None,
            "prompt_tokens": tokens,
            "completion_tokens": 0,
        },
    )


async def test_activity_statistics_count_by_status_pool_bucket_and_latency(
    pool: Pool, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path)
    alice = await make_user(pool, "alice")
    bob = await make_user(pool, "bob", project_id=await make_project(pool))
    mine = await make_batch(pool, blobs, alice, chat_file(8, prefix="a"))
    theirs = await make_batch(pool, blobs, bob, chat_file(3, prefix="b"))
    for _ in range(2):
        await ingest_next(pool, blobs, max_requests=100, now=utcnow)
    now = datetime.now(UTC).replace(microsecond=0)
    since = now - timedelta(minutes=10)
    async with pool.connection() as conn:
        await _finish(conn, mine.id, 1, status="completed", pool="spot", finished=since, took=0.02)
        await _finish(
            conn, mine.id, 2, status="completed", pool="spot", finished=since, took=3, tokens=5
        )
        await _finish(
            conn,
            mine.id,
            3,
            status="completed",
            pool="dedicated",
            finished=since + timedelta(minutes=2, seconds=30),
            took=0.3,
        )
        await _finish(
            conn,
            mine.id,
            4,
            status="failed",
            pool="spot",
            finished=now - timedelta(seconds=5),
            took=1,
        )
        await _finish(
            conn,
            mine.id,
            5,
            status="completed",
            pool="spot",
            finished=now - timedelta(seconds=5),
            took=0,
            tokens=7,
            dedup=True,
        )
        # too old to count
        await _finish(
            conn,
            mine.id,
            6,
            status="completed",
            pool="spot",
            finished=since - timedelta(seconds=1),
            took=1,
        )
        await _finish(
            conn, theirs.id, 1, status="completed", pool="dedicated", finished=now, took=1
        )
        await conn.execute(
            "UPDATE requests SET status = 'running', pool = 'dedicated' WHERE id = "
            "(SELECT id FROM request_inputs WHERE batch_id = %s AND line = 7)",
            (mine.id,),
        )

        live = {
            (r["status"], r["pool"]): r["n"]
            for r in await browse.live_requests(conn, alice.project_id)
        }
        assert live == {("queued", "spot"): 1, ("running", "dedicated"): 1}
        everyone_live = await browse.live_requests(conn, None)
        assert sum(r["n"] for r in everyone_live) == 4
        assert await browse.live_requests(conn, None, batch_id=theirs.id) == [
            {"status": "queued", "pool": "spot", "n": 2}
        ]

        done = {
            (r["status"], r["pool"]): r
            for r in await browse.finished_since(conn, alice.project_id, since)
        }
        assert {k: v["n"] for k, v in done.items()} == {
            ("completed", "spot"): 3,
            ("completed", "dedicated"): 1,
            ("failed", "spot"): 1,
        }
        assert done[("completed", "spot")]["deduplicated"] == 1
        assert done[("completed", "spot")]["dedup_tokens"] == 7
        assert done[("completed", "spot")]["tokens"] == 10 + 5 + 7
        assert sum(r["n"] for r in await browse.finished_since(conn, None, since)) == 6

        series = await browse.activity_series(conn, alice.project_id, since, 60)
        got = {(r["bucket"], r["pool"]): (r["completed"], r["failed"]) for r in series}
        last = since + timedelta(minutes=9)
        assert got == {
            (since, "spot"): (2, 0),
            (since + timedelta(minutes=2), "dedicated"): (1, 0),
            (last, "spot"): (1, 1),
        }
        by_batch = await browse.activity_series(conn, None, since, 600, batch_id=theirs.id)
        assert [(r["bucket"], r["pool"], r["completed"]) for r in by_batch] == [
            (since + timedelta(minutes=10), "dedicated", 1)
        ]

        edges = (0.1, 1.0, 2.5)
        # 0.02 s -> bin 0, 0.3 s -> bin 1, 3 s -> bin 3; the deduplicated one ran nothing
        assert await browse.latency_histogram(conn, alice.project_id, since, edges) == [1, 1, 0, 1]
        assert await browse.latency_histogram(conn, None, since, edges) == [1, 1, 1, 1]

        breakdown = {
            (r["status"], r["pool"]): r for r in await browse.pool_breakdown(conn, mine.id)
        }
        assert breakdown[("completed", "spot")]["n"] == 4
        assert breakdown[("completed", "spot")]["deduplicated"] == 1


async def test_deadline_risk_and_predicted_finish(pool: Pool) -> None:
    alice = await make_user(pool, "alice")
    bob = await make_user(pool, "bob", project_id=await make_project(pool))
    now = datetime(2025, 3, 2, 12, 0, tzinfo=UTC)
    hour = timedelta(hours=1)
    async with pool.connection() as conn:
        # an hour in, a quarter done, two hours left: needs three more hours -> at risk
        slow = await _insert_batch(
            conn, alice, 1, status="in_progress", created_at=now - hour,
            in_progress_at=now - hour, deadline_at=now + 2 * hour,
            total=100, completed=20, failed=5,
        )  # fmt: skip
        # an hour in, half done, two hours left: fine
        await _insert_batch(
            conn, alice, 2, status="in_progress", created_at=now - hour,
            in_progress_at=now - hour, deadline_at=now + 2 * hour,
            total=100, completed=50, failed=0,
        )  # fmt: skip
        # nothing finished and more than half the window gone -> at risk
        stalled = await _insert_batch(
            conn, alice, 3, status="in_progress", created_at=now - 2 * hour,
            in_progress_at=now - 2 * hour, deadline_at=now + hour, total=10,
        )  # fmt: skip
        # nothing finished yet, early in its window: fine
        await _insert_batch(
            conn, alice, 4, status="validating", created_at=now - hour, deadline_at=now + 23 * hour
        )
        # past its deadline and not finished -> at risk; finished batches never are
        late = await _insert_batch(
            conn, bob, 5, status="in_progress", created_at=now - 2 * hour,
            in_progress_at=now - 2 * hour, deadline_at=now - timedelta(minutes=1),
            total=10, completed=9,
        )  # fmt: skip
        await _insert_batch(
            conn, bob, 6, status="completed", created_at=now - 2 * hour, deadline_at=now - hour
        )

        risky = await browse.at_risk(conn, None, now)
        assert [r["id"] for r in risky] == [late["id"], stalled["id"], slow["id"]]
        assert [r["id"] for r in await browse.at_risk(conn, alice.project_id, now)] == [
            stalled["id"],
            slow["id"],
        ]
        assert risky[2]["predicted_finish_at"] == now + 3 * hour
        assert await browse.predicted_finish(conn, slow["id"], now) == now + 3 * hour
        assert await browse.predicted_finish(conn, stalled["id"], now) is None


async def test_session_keys_follow_revocation_and_the_secret_is_shared(pool: Pool) -> None:
    now = utcnow()
    async with pool.connection() as conn:
        carol = await users.ensure_user(conn, "carol", is_admin=False)
        await users.add_key(conn, carol.id, "ib-carols-key")
        key_id = (await projects.authenticate(conn, "ib-carols-key", now)).key_id
        assert key_id is not None
        with pytest.raises(Unauthorized):
            await projects.authenticate(conn, "ib-wrong", now)
        signed_in = await projects.session_principal(conn, key_id, now)
        assert signed_in is not None
        assert (signed_in.id, signed_in.project_id, signed_in.role) == (
            carol.id,
            DEFAULT_PROJECT_ID,
            "member",
        )
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,))
        assert await projects.session_principal(conn, key_id, now) is None
        with pytest.raises(Unauthorized) as refused:
            await projects.authenticate(conn, "ib-carols-key", now)
        assert refused.value.code == "api_key_revoked"

        first = await browse.signing_secret(conn, "session", b"a" * 32)
        assert first == b"a" * 32
        assert await browse.signing_secret(conn, "session", b"b" * 32) == first
