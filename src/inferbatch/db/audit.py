"""The audit log's rows: appended one per change, listed newest first in keyset pages,
purged past their retention in bounded steps. Every function takes an open connection and
never commits.

The list order is ``(effective_at, seq)`` descending; every filter has an index ending in
those two columns (migration 0019), so a page reads one index range whatever the history.
Rows are never updated, and deleted only by :func:`purge_step`, which the table's trigger
lets through because it sets ``inferbatch.audit_purge`` for its own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb

from inferbatch.db.types import Conn

ActorType = Literal["session", "api_key", "cli"]
Result = Literal["succeeded", "failed"]

PURGE_STEP = 5000
"""Rows deleted per purge step (per transaction)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One change to append. ``actor_id`` is a user's or a service account's id (None when
    the actor is unknown, as for a refused key: then ``key_prefix`` may say which)."""

    type: str
    actor_type: ActorType
    result: Result
    project_id: str | None = None
    actor_id: str | None = None
    actor_name: str | None = None
    service_account: bool = False
    key_id: str | None = None
    key_prefix: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    object_id: str | None = None
    status_code: int | None = None
    error_code: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    effective_at: datetime | None = None
    """None: the transaction's time."""


@dataclass(frozen=True, slots=True)
class Row:
    """A stored event, with the name of its project when that still exists."""

    seq: int
    effective_at: datetime
    type: str
    project_id: str | None
    project_name: str | None
    actor_type: ActorType
    actor_id: str | None
    actor_name: str | None
    service_account: bool
    key_id: str | None
    key_prefix: str | None
    ip_address: str | None
    user_agent: str | None
    object_id: str | None
    result: Result
    status_code: int | None
    error_code: str | None
    data: dict[str, Any]


INSERT = """
INSERT INTO audit_logs (effective_at, type, project_id, actor_type, actor_id, actor_name,
    service_account, key_id, key_prefix, ip_address, user_agent, object_id, result,
    status_code, error_code, data)
VALUES (coalesce(%(effective_at)s, now()), %(type)s, %(project_id)s, %(actor_type)s,
    %(actor_id)s, %(actor_name)s, %(service_account)s, %(key_id)s, %(key_prefix)s,
    %(ip_address)s, %(user_agent)s, %(object_id)s, %(result)s, %(status_code)s,
    %(error_code)s, %(data)s)
"""
"""Append one event."""


async def append(conn: Conn, event: Event) -> None:
    params = {name: getattr(event, name) for name in Event.__slots__}
    params["data"] = Jsonb(event.data)
    await conn.execute(INSERT, params)


@dataclass(frozen=True, slots=True)
class Filters:
    """What a list keeps: every given filter must match (a list matches any of its values)."""

    project_ids: Sequence[str] | None = None
    types: Sequence[str] | None = None
    actor_ids: Sequence[str] | None = None
    """Users', service accounts' or keys' ids."""
    actor_names: Sequence[str] | None = None
    resource_ids: Sequence[str] | None = None
    gt: datetime | None = None
    gte: datetime | None = None
    lt: datetime | None = None
    lte: datetime | None = None


Cursor = tuple[datetime, int]
"""A row's place in the list order: ``(effective_at, seq)``."""

_CONDITIONS = {
    "project_ids": "a.project_id = ANY(%(project_ids)s)",
    "types": "a.type = ANY(%(types)s)",
    "actor_ids": "(a.actor_id = ANY(%(actor_ids)s) OR a.key_id = ANY(%(actor_ids)s))",
    "actor_names": "a.actor_name = ANY(%(actor_names)s)",
    "resource_ids": "a.object_id = ANY(%(resource_ids)s)",
    "gt": "a.effective_at > %(gt)s",
    "gte": "a.effective_at >= %(gte)s",
    "lt": "a.effective_at < %(lt)s",
    "lte": "a.effective_at <= %(lte)s",
}


async def page(
    conn: Conn,
    filters: Filters,
    *,
    limit: int,
    after: Cursor | None = None,
    before: Cursor | None = None,
) -> list[Row]:
    """Up to ``limit`` + 1 matching rows, newest first: older than ``after``, or else the
    ones just newer than ``before`` (still newest first), or else the newest."""
    params: dict[str, Any] = {"limit": limit + 1}
    where = []
    for name, condition in _CONDITIONS.items():
        value = getattr(filters, name)
        if value is not None:
            params[name] = list(value) if isinstance(value, Sequence) else value
            where.append(condition)
    order = "DESC"
    if after is not None:
        where.append("(a.effective_at, a.seq) < (%(cursor_at)s, %(cursor_seq)s)")
        params["cursor_at"], params["cursor_seq"] = after
    elif before is not None:
        where.append("(a.effective_at, a.seq) > (%(cursor_at)s, %(cursor_seq)s)")
        params["cursor_at"], params["cursor_seq"] = before
        order = "ASC"
    cur = await conn.execute(
        f"""
        SELECT a.seq, a.effective_at, a.type, a.project_id, p.name AS project_name,
            a.actor_type, a.actor_id, a.actor_name, a.service_account, a.key_id, a.key_prefix,
            a.ip_address, a.user_agent, a.object_id, a.result, a.status_code, a.error_code,
            a.data
        FROM audit_logs a LEFT JOIN projects p ON p.id = a.project_id
        WHERE {" AND ".join(where) or "true"}
        ORDER BY a.effective_at {order}, a.seq {order} LIMIT %(limit)s
        """,
        params,
    )
    rows = [Row(**r) for r in await cur.fetchall()]
    if before is not None and after is None:
        # the rows just newer than the cursor, the newest of them first; beyond the
        # limit the extra one is the newest (the caller drops the last row it gets)
        rows = rows[:limit][::-1] + rows[limit:]
    return rows


async def purge_step(conn: Conn, older_than: datetime, limit: int = PURGE_STEP) -> int:
    """Delete up to ``limit`` of the oldest rows effective before ``older_than``, through
    the ``(effective_at, seq)`` index; how many went. The caller commits: one step, one
    transaction (the setting that lets the trigger pass ends with it)."""
    await conn.execute("SELECT set_config('inferbatch.audit_purge', 'on', true)")
    cur = await conn.execute(
        """
        DELETE FROM audit_logs WHERE seq IN (
            SELECT seq FROM audit_logs WHERE effective_at < %s
            ORDER BY effective_at, seq LIMIT %s)
        """,
        (older_than, limit),
    )
    await conn.execute("SELECT set_config('inferbatch.audit_purge', 'off', true)")
    return cur.rowcount
