"""Webhook endpoints and the delivery outbox.

An event is queued by :func:`enqueue_batch_event` inside the transaction that moves its
batch to a terminal status (``db.batches.mark_finished``, ``mark_invalid``): one
``webhook_deliveries`` row per enabled endpoint of the batch's owner that wants the event
type, and one for the batch's own ``callback_url``. A crash therefore neither loses an event
(the rows commit with the status) nor invents one (they roll back with it).

Delivery is at least once. :data:`CLAIM` leases due rows to one delivery duty, as the queue
claims requests: ``FOR UPDATE SKIP LOCKED`` over the partial index on pending rows, ``attempts
+ 1`` and ``next_attempt_at`` pushed to the end of the lease, so that a duty that dies
mid-send leaves the row due again once its lease ends. :func:`record_attempt` is fenced on
the owner and the attempt claimed, so a duty whose lease ran out cannot overwrite a newer
attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from inferbatch.db.types import Conn
from inferbatch.domain import ClaimedDelivery, WebhookDelivery, WebhookEndpoint
from inferbatch.ids import new_id
from inferbatch.protocol.webhooks import BATCH_EVENTS, event_body

_ENDPOINT_COLUMNS = "id, owner_id, url, events, description, enabled, created_at, updated_at"
_DELIVERY_COLUMNS = ", ".join(WebhookDelivery.__slots__)

# -- endpoints ------------------------------------------------------------------------------


async def insert_endpoint(
    conn: Conn,
    *,
    endpoint_id: str,
    owner_id: str,
    url: str,
    events: Sequence[str],
    description: str | None,
    enabled: bool,
    secret: str,
    now: datetime,
) -> WebhookEndpoint:
    cur = await conn.execute(
        f"""
        INSERT INTO webhook_endpoints (id, owner_id, url, events, description, enabled,
            secret, created_at, updated_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_ENDPOINT_COLUMNS}
        """,
        (endpoint_id, owner_id, url, list(events), description, enabled, secret, now, now),
    )
    row = await cur.fetchone()
    assert row is not None
    return WebhookEndpoint.from_row(row)


async def count_endpoints(conn: Conn, owner_id: str) -> int:
    cur = await conn.execute(
        "SELECT count(*)::int AS n FROM webhook_endpoints WHERE owner_id = %s", (owner_id,)
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def get_endpoint(
    conn: Conn, endpoint_id: str, owner_id: str | None
) -> WebhookEndpoint | None:
    """The endpoint, if it exists and (unless ``owner_id`` is None) belongs to ``owner_id``."""
    cur = await conn.execute(
        f"""
        SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints
        WHERE id = %(id)s AND (%(owner)s::text IS NULL OR owner_id = %(owner)s)
        """,
        {"id": endpoint_id, "owner": owner_id},
    )
    row = await cur.fetchone()
    return WebhookEndpoint.from_row(row) if row else None


async def list_endpoints(
    conn: Conn, owner_id: str | None, *, after: str | None, limit: int
) -> list[WebhookEndpoint]:
    """Up to ``limit`` + 1 endpoints, newest first, starting after the cursor id."""
    cur = await conn.execute(
        f"""
        SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints
        WHERE (%(owner)s::text IS NULL OR owner_id = %(owner)s)
          AND (%(after)s::text IS NULL OR (created_at, id) <
               (SELECT created_at, id FROM webhook_endpoints WHERE id = %(after)s))
        ORDER BY created_at DESC, id DESC
        LIMIT %(limit)s
        """,
        {"owner": owner_id, "after": after, "limit": limit + 1},
    )
    return [WebhookEndpoint.from_row(r) for r in await cur.fetchall()]


async def update_endpoint(
    conn: Conn,
    endpoint_id: str,
    owner_id: str | None,
    *,
    now: datetime,
    url: str | None = None,
    events: Sequence[str] | None = None,
    enabled: bool | None = None,
    description: str | None = None,
    set_description: bool = False,
) -> WebhookEndpoint | None:
    """Change the fields given (None: unchanged; ``description`` only with
    ``set_description``); None if there is no such endpoint for ``owner_id``."""
    cur = await conn.execute(
        f"""
        UPDATE webhook_endpoints SET
            url = coalesce(%(url)s, url),
            events = coalesce(%(events)s::text[], events),
            enabled = coalesce(%(enabled)s, enabled),
            description = CASE WHEN %(set_desc)s THEN %(desc)s ELSE description END,
            updated_at = %(now)s
        WHERE id = %(id)s AND (%(owner)s::text IS NULL OR owner_id = %(owner)s)
        RETURNING {_ENDPOINT_COLUMNS}
        """,
        {
            "id": endpoint_id,
            "owner": owner_id,
            "url": url,
            "events": list(events) if events is not None else None,
            "enabled": enabled,
            "set_desc": set_description,
            "desc": description,
            "now": now,
        },
    )
    row = await cur.fetchone()
    return WebhookEndpoint.from_row(row) if row else None


async def delete_endpoint(conn: Conn, endpoint_id: str, owner_id: str | None) -> bool:
    """Delete the endpoint and, with it, its deliveries (pending ones are never sent)."""
    cur = await conn.execute(
        """
        DELETE FROM webhook_endpoints
        WHERE id = %(id)s AND (%(owner)s::text IS NULL OR owner_id = %(owner)s)
        """,
        {"id": endpoint_id, "owner": owner_id},
    )
    return cur.rowcount == 1


async def fail_pending(conn: Conn, endpoint_id: str, reason: str, now: datetime) -> int:
    """Settle the endpoint's pending deliveries as ``failed`` with ``reason`` (it was
    disabled); one a duty is sending now is fenced out of recording its attempt."""
    cur = await conn.execute(
        """
        UPDATE webhook_deliveries SET status = 'failed', last_error = %s, finished_at = %s,
            lease_owner = NULL
        WHERE endpoint_id = %s AND status = 'pending'
        """,
        (reason, now, endpoint_id),
    )
    return cur.rowcount


# -- the outbox -----------------------------------------------------------------------------

ENQUEUE = """
WITH b AS (
    SELECT id, owner_id, callback_url FROM batches WHERE id = %(batch)s
), targets AS (
    SELECT e.id AS endpoint_id FROM webhook_endpoints e JOIN b ON e.owner_id = b.owner_id
    WHERE e.enabled AND %(type)s = ANY(e.events)
    UNION ALL
    SELECT NULL FROM b WHERE b.callback_url IS NOT NULL
)
INSERT INTO webhook_deliveries (event_id, event_type, batch_id, owner_id, endpoint_id,
    payload, next_attempt_at, created_at)
SELECT %(event)s, %(type)s, b.id, b.owner_id, t.endpoint_id, %(payload)s, %(now)s, %(now)s
FROM targets t CROSS JOIN b
"""
"""One delivery of a new event per target (see the module docstring); due at once."""


async def enqueue_batch_event(conn: Conn, batch_id: str, status: str, now: datetime) -> int:
    """Queue the event of ``batch_id`` reaching terminal ``status`` (``batch.<status>``, one
    new event id shared by every target); returns how many deliveries were queued. Call it
    in the transaction that changes the batch's status."""
    event_type = BATCH_EVENTS[status]
    event_id = new_id("evt_")
    payload = event_body(event_id, event_type, int(now.timestamp()), batch_id)
    cur = await conn.execute(
        ENQUEUE,
        {"batch": batch_id, "type": event_type, "event": event_id, "payload": payload, "now": now},
    )
    return cur.rowcount


CLAIM = """
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE status = 'pending' AND next_attempt_at <= %(now)s
    ORDER BY next_attempt_at
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE webhook_deliveries d SET
        attempts = d.attempts + 1, lease_owner = %(owner)s, last_attempt_at = %(now)s,
        next_attempt_at = %(now)s + make_interval(secs => %(lease)s)
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.event_id, d.payload, d.attempts, d.endpoint_id, d.batch_id
)
SELECT c.id, c.event_id, c.payload, c.attempts,
    CASE WHEN c.endpoint_id IS NULL THEN b.callback_url ELSE e.url END AS url,
    CASE WHEN c.endpoint_id IS NULL THEN b.callback_secret ELSE e.secret END AS secret,
    coalesce(e.enabled, true) AS enabled
FROM claimed c JOIN batches b ON b.id = c.batch_id
LEFT JOIN webhook_endpoints e ON e.id = c.endpoint_id
ORDER BY c.id
"""


async def claim(
    conn: Conn, *, owner: str, n: int, now: datetime, lease_seconds: float
) -> list[ClaimedDelivery]:
    """Lease up to ``n`` due deliveries to ``owner`` for ``lease_seconds``, oldest due
    first; each claim counts as an attempt."""
    cur = await conn.execute(CLAIM, {"owner": owner, "n": n, "now": now, "lease": lease_seconds})
    return [
        ClaimedDelivery(
            id=r["id"],
            event_id=r["event_id"],
            payload=r["payload"],
            attempt=r["attempts"],
            url=r["url"],
            secret=r["secret"],
            enabled=r["enabled"],
        )
        for r in await cur.fetchall()
    ]


AttemptOutcome = Literal["delivered", "retry", "failed"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one claimed attempt ended, written back with :func:`record_attempt`."""

    delivery_id: int
    attempt: int
    outcome: AttemptOutcome
    response_status: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    """With ``retry``: when the next attempt is due."""


async def record_attempt(conn: Conn, owner: str, result: Attempt, now: datetime) -> bool:
    """Write the end of an attempt; False if the lease had moved on (the row was claimed
    again after this lease ended, settled meanwhile, or its endpoint deleted)."""
    if result.outcome == "retry" and result.next_attempt_at is None:
        raise ValueError("a retry needs next_attempt_at")
    cur = await conn.execute(
        """
        UPDATE webhook_deliveries SET
            status = CASE WHEN %(outcome)s = 'retry' THEN 'pending' ELSE %(outcome)s END,
            next_attempt_at = coalesce(%(next)s, next_attempt_at),
            finished_at = CASE WHEN %(outcome)s = 'retry' THEN NULL ELSE %(now)s END,
            last_response_status = %(status)s, last_error = %(error)s, lease_owner = NULL
        WHERE id = %(id)s AND status = 'pending' AND lease_owner = %(owner)s
          AND attempts = %(attempt)s
        """,
        {
            "outcome": result.outcome,
            "next": result.next_attempt_at,
            "now": now,
            "status": result.response_status,
            "error": result.error,
            "id": result.delivery_id,
            "owner": owner,
            "attempt": result.attempt,
        },
    )
    return cur.rowcount == 1


# -- reading --------------------------------------------------------------------------------


async def list_deliveries(
    conn: Conn, endpoint_id: str, *, after: int | None, limit: int
) -> list[WebhookDelivery]:
    """Up to ``limit`` + 1 deliveries to one endpoint, newest first, after the cursor."""
    cur = await conn.execute(
        f"""
        SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries
        WHERE endpoint_id = %(endpoint)s AND (%(after)s::bigint IS NULL OR id < %(after)s)
        ORDER BY id DESC LIMIT %(limit)s
        """,
        {"endpoint": endpoint_id, "after": after, "limit": limit + 1},
    )
    return [WebhookDelivery.from_row(r) for r in await cur.fetchall()]


async def recent_deliveries(
    conn: Conn, owner_id: str | None, *, limit: int
) -> list[WebhookDelivery]:
    """The newest ``limit`` deliveries of ``owner_id``'s events (every owner's for None),
    to endpoints and to callback URLs."""
    cur = await conn.execute(
        f"""
        SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries
        WHERE (%(owner)s::text IS NULL OR owner_id = %(owner)s)
        ORDER BY id DESC LIMIT %(limit)s
        """,
        {"owner": owner_id, "limit": limit},
    )
    return [WebhookDelivery.from_row(r) for r in await cur.fetchall()]


async def deliveries_of_batch(conn: Conn, batch_id: str) -> list[WebhookDelivery]:
    cur = await conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE batch_id = %s ORDER BY id",
        (batch_id,),
    )
    return [WebhookDelivery.from_row(r) for r in await cur.fetchall()]


async def pending_count(conn: Conn) -> int:
    """Deliveries not yet delivered or failed (reads the partial index on pending rows)."""
    cur = await conn.execute(
        "SELECT count(*)::int AS n FROM webhook_deliveries WHERE status = 'pending'"
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0
