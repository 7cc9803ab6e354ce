"""One scheduler leads at a time; another takes over when the leader's connection ends."""

from __future__ import annotations

import pytest

from inferbatch.scheduler.leadership import Leadership

pytestmark = pytest.mark.integration


async def test_only_one_leader_and_takeover_after_release(db_url: str) -> None:
    a, b = Leadership(db_url), Leadership(db_url)
    try:
        assert await a.refresh() is True
        assert await b.refresh() is False
        assert await a.refresh() is True  # still leading
        await a.release()
        assert await b.refresh() is True
        assert await a.refresh() is False
    finally:
        await a.release()
        await b.release()


async def test_leadership_is_lost_when_the_connection_is_killed(db_url: str) -> None:
    import psycopg

    a, b = Leadership(db_url), Leadership(db_url)
    try:
        assert await a.refresh()
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'inferbatch-leader' AND datname = current_database()"
            )
        assert await a.refresh() is False
        assert a.is_leader is False
        assert await b.refresh() is True
    finally:
        await a.release()
        await b.release()
