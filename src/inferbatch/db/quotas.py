"""A project's quota limits (``project_quotas``) and the usage they are checked against
(``project_usage``, moved by triggers: see migration 0018). One row of each per project,
read by key: a check costs the same whatever the project's history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from inferbatch.db.types import Conn

QUOTAS = (
    "queued_requests",
    "enqueued_tokens",
    "batches_in_progress",
    "stored_bytes",
    "creates_per_minute",
)
"""Every quota, by name: the same name for its limit and its use."""

_COUNTERS = "queued_requests, enqueued_tokens, batches_in_progress, stored_bytes"


@dataclass(frozen=True, slots=True)
class ProjectQuotas:
    """A project's limits (None: unlimited) and use, by quota name; the use of
    ``creates_per_minute`` is the batches created in the minute of ``now``."""

    project_id: str
    limits: Mapping[str, int | None]
    usage: Mapping[str, int]
    updated_at: datetime | None


_READ = f"""
SELECT u.project_id, {", ".join(f"u.{c}" for c in _COUNTERS.split(", "))},
    CASE WHEN u.minute = date_trunc('minute', %(now)s::timestamptz) THEN u.minute_creates
        ELSE 0 END AS creates_per_minute,
    {", ".join(f"q.{name} AS limit_{name}" for name in QUOTAS)}, q.updated_at
FROM project_usage u LEFT JOIN project_quotas q ON q.project_id = u.project_id
WHERE u.project_id = %(project)s
"""


def _quotas(row: Mapping[str, object]) -> ProjectQuotas:
    updated = row["updated_at"]
    return ProjectQuotas(
        project_id=str(row["project_id"]),
        limits={name: row[f"limit_{name}"] for name in QUOTAS},  # type: ignore[misc]
        usage={name: int(row[name]) for name in QUOTAS},  # type: ignore[call-overload]
        updated_at=updated if isinstance(updated, datetime) else None,
    )


async def _ensure_usage(conn: Conn, project_id: str) -> None:
    """The project's usage row, made at nothing used when it has none yet (a project made
    after the migration, before any of its files or batches)."""
    await conn.execute(
        "INSERT INTO project_usage (project_id) VALUES (%s) ON CONFLICT DO NOTHING",
        (project_id,),
    )


async def read(conn: Conn, project_id: str, now: datetime) -> ProjectQuotas:
    """The project's limits and use at ``now`` (the project exists)."""
    cur = await conn.execute(_READ, {"project": project_id, "now": now})
    row = await cur.fetchone()
    if row is None:
        await _ensure_usage(conn, project_id)
        cur = await conn.execute(_READ, {"project": project_id, "now": now})
        row = await cur.fetchone()
    assert row is not None
    return _quotas(row)


async def lock(conn: Conn, project_id: str, now: datetime) -> ProjectQuotas:
    """The project's limits and use, its usage row locked until the transaction ends: a
    check and the change it admits are one step, so two racing creates are checked one
    after the other."""
    statement = _READ + " FOR UPDATE OF u"
    cur = await conn.execute(statement, {"project": project_id, "now": now})
    row = await cur.fetchone()
    if row is None:
        await _ensure_usage(conn, project_id)
        cur = await conn.execute(statement, {"project": project_id, "now": now})
        row = await cur.fetchone()
    assert row is not None
    return _quotas(row)


async def count_create(conn: Conn, project_id: str, now: datetime) -> None:
    """Count a batch created at ``now`` in its minute's window (the row is locked)."""
    await conn.execute(
        """
        UPDATE project_usage SET
            minute_creates = CASE WHEN minute = date_trunc('minute', %(now)s::timestamptz)
                THEN minute_creates + 1 ELSE 1 END,
            minute = date_trunc('minute', %(now)s::timestamptz)
        WHERE project_id = %(project)s
        """,
        {"project": project_id, "now": now},
    )


async def set_limits(
    conn: Conn, project_id: str, limits: Mapping[str, int | None], now: datetime
) -> None:
    """Set the given limits (None clears one: unlimited), keeping the others."""
    names = [name for name in QUOTAS if name in limits]
    assert len(names) == len(limits), "set_limits: unknown quota"
    columns = "".join(f", {name}" for name in names)
    values = "".join(f", %({name})s" for name in names)
    updates = "".join(f", {name} = EXCLUDED.{name}" for name in names)
    await conn.execute(
        f"""
        INSERT INTO project_quotas (project_id, updated_at{columns})
        VALUES (%(project)s, %(now)s{values})
        ON CONFLICT (project_id) DO UPDATE SET updated_at = EXCLUDED.updated_at{updates}
        """,
        {"project": project_id, "now": now, **limits},
    )
