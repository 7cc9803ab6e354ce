"""Webhook endpoints and the delivery outbox.

An event is queued by :func:`enqueue_batch_event` inside the transaction that moves its
batch to a terminal status (``db.batches.mark_finished``, ``mark_invalid``): one
``webhook_deliveries`` row per endpoint of the batch's project that wants the event type, and
one for the batch's own ``callback_url``. A crash therefore neither loses an event
(the rows commit with the status) nor invents one (they roll back with it).

Delivery is at least once. :data:`CLAIM` leases due rows to one delivery duty, as the queue
claims requests: ``FOR UPDATE SKIP LOCKED`` over the partial index on pending rows, ``attempts
+ 1`` and ``next_attempt_at`` pushed to the end of the lease, so that a duty that dies
mid-send leaves the row due again once its lease ends. :func:`record_attempt` is fenced on
the owner and the attempt claimed, so a duty whose lease ran out cannot overwrite a newer
attempt.

Secrets are read when an attempt is claimed, not when the event is queued: a rotation
applies to every attempt after it, and while a rotation keeps the old secret active both
sign (Standard Webhooks allows several ``v1,`` signatures, and receivers accept any).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from inferbatch.db.types import Conn
from inferbatch.domain import DEFAULT_PROJECT_ID, ClaimedDelivery, WebhookDelivery, WebhookEndpoint
from inferbatch.ids import new_id
from inferbatch.protocol.webhooks import BATCH_EVENTS, event_body

SECRET_HINT = "'whsec_...' || right(rtrim(secret, '='), 4)"
"""The masked hint of the current secret: its prefix and last four characters (padding
left out)."""
_ENDPOINT_COLUMNS = (
    "id, owner_id, name, url, event_types, "
    f"{SECRET_HINT} AS signing_secret_hint, previous_secret_expires_at, created_at, updated_at, "
    "project_id"
)
_DELIVERY_COLUMNS = ", ".join(WebhookDelivery.__slots__)
_MINE = "(%(project)s::text IS NULL OR project_id = %(project)s)"
"""The row is of ``project`` (any project's when it is None: admins)."""

# -- endpoints ------------------------------------------------------------------------------


async def insert_endpoint(
    conn: Conn,
    *,
    endpoint_id: str,
    owner_id: str,
    name: str,
    url: str,
    event_types: Sequence[str],
    secret: str,
    now: datetime,
    project_id: str = DEFAULT_PROJECT_ID,
) -> WebhookEndpoint:
    cur = await conn.execute(
        f"""
        INSERT INTO webhook_endpoints (id, owner_id, name, url, event_types, secret,
            created_at, updated_at, project_id)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_ENDPOINT_COLUMNS}
        """,
        (endpoint_id, owner_id, name, url, list(event_types), secret, now, now, project_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return WebhookEndpoint.from_row(row)


async def count_endpoints(conn: Conn, project_id: str) -> int:
    """The project's endpoints."""
    cur = await conn.execute(
        "SELECT count(*)::int AS n FROM webhook_endpoints WHERE project_id = %s", (project_id,)
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def get_endpoint(
    conn: Conn, endpoint_id: str, project_id: str | None
) -> WebhookEndpoint | None:
    """The endpoint, if it exists and (unless ``project_id`` is None) is of ``project_id``."""
    cur = await conn.execute(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = %(id)s AND {_MINE}",
        {"id": endpoint_id, "project": project_id},
    )
    row = await cur.fetchone()
    return WebhookEndpoint.from_row(row) if row else None


async def list_endpoints(
    conn: Conn, project_id: str | None, *, after: str | None, limit: int
) -> list[WebhookEndpoint]:
    """Up to ``limit`` + 1 endpoints, newest first, starting after the cursor id (one of
    ``project_id``'s; another's, or none, starts nowhere: an empty page)."""
    cur = await conn.execute(
        f"""
        SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints
        WHERE {_MINE}
          AND (%(after)s::text IS NULL OR (created_at, id) <
               (SELECT created_at, id FROM webhook_endpoints WHERE id = %(after)s AND {_MINE}))
        ORDER BY created_at DESC, id DESC
        LIMIT %(limit)s
        """,
        {"project": project_id, "after": after, "limit": limit + 1},
    )
    return [WebhookEndpoint.from_row(r) for r in await cur.fetchall()]


async def update_endpoint(
    conn: Conn,
    endpoint_id: str,
    project_id: str | None,
    *,
    now: datetime,
    name: str | None = None,
    url: str | None = None,
    event_types: Sequence[str] | None = None,
) -> WebhookEndpoint | None:
    """Change the fields given (None: unchanged); ``updated_at`` moves to ``now`` only when
    a value changed. None if there is no such endpoint in ``project_id``."""
    cur = await conn.execute(
        f"""
        UPDATE webhook_endpoints SET
            name = coalesce(%(name)s, name),
            url = coalesce(%(url)s, url),
            event_types = coalesce(%(types)s::text[], event_types),
            updated_at = CASE
                WHEN (coalesce(%(name)s, name), coalesce(%(url)s, url),
                      coalesce(%(types)s::text[], event_types))
                     IS DISTINCT FROM (name, url, event_types)
                THEN %(now)s ELSE updated_at END
        WHERE id = %(id)s AND {_MINE}
        RETURNING {_ENDPOINT_COLUMNS}
        """,
        {
            "id": endpoint_id,
            "project": project_id,
            "name": name,
            "url": url,
            "types": list(event_types) if event_types is not None else None,
            "now": now,
        },
    )
    row = await cur.fetchone()
    return WebhookEndpoint.from_row(row) if row else None


async def rotate_secret(
    conn: Conn,
    endpoint_id: str,
    project_id: str | None,
    *,
    secret: str,
    keep_old_until: datetime | None,
    now: datetime,
) -> WebhookEndpoint | None:
    """Make ``secret`` the endpoint's secret. With ``keep_old_until`` the replaced one
    signs deliveries too until then (a secret kept from an earlier rotation is dropped);
    without, it stops at once. None if there is no such endpoint in ``project_id``."""
    cur = await conn.execute(
        f"""
        UPDATE webhook_endpoints SET
            previous_secret = CASE WHEN %(until)s::timestamptz IS NULL THEN NULL ELSE secret END,
            previous_secret_expires_at = %(until)s::timestamptz,
            secret = %(secret)s,
            updated_at = %(now)s
        WHERE id = %(id)s AND {_MINE}
        RETURNING {_ENDPOINT_COLUMNS}
        """,
        {
            "id": endpoint_id,
            "project": project_id,
            "secret": secret,
            "until": keep_old_until,
            "now": now,
        },
    )
    row = await cur.fetchone()
    return WebhookEndpoint.from_row(row) if row else None


@dataclass(frozen=True, slots=True)
class Target:
    """Where an endpoint's events go and the secrets that sign them at one moment."""

    url: str
    secrets: tuple[str, ...]


ACTIVE_SECRETS = """
array_remove(ARRAY[e.secret,
    CASE WHEN e.previous_secret_expires_at > %(now)s THEN e.previous_secret END], NULL)
"""
"""The secrets that sign an endpoint ``e``'s deliveries at ``now``: its own, and the one it
rotated from while that is kept active."""


async def get_target(
    conn: Conn, endpoint_id: str, project_id: str | None, now: datetime
) -> Target | None:
    """The endpoint's URL and its active secrets at ``now`` (for a test event)."""
    cur = await conn.execute(
        f"""
        SELECT e.url, {ACTIVE_SECRETS} AS secrets FROM webhook_endpoints e
        WHERE e.id = %(id)s AND (%(project)s::text IS NULL OR e.project_id = %(project)s)
        """,
        {"id": endpoint_id, "project": project_id, "now": now},
    )
    row = await cur.fetchone()
    return Target(row["url"], tuple(row["secrets"])) if row else None


async def delete_endpoint(conn: Conn, endpoint_id: str, project_id: str | None) -> bool:
    """Delete the endpoint and, with it, its deliveries (pending ones are never sent)."""
    cur = await conn.execute(
        f"DELETE FROM webhook_endpoints WHERE id = %(id)s AND {_MINE}",
        {"id": endpoint_id, "project": project_id},
    )
    return cur.rowcount == 1


# -- the outbox -----------------------------------------------------------------------------

ENQUEUE = """
WITH b AS (
    SELECT id, owner_id, project_id, callback_url FROM batches WHERE id = %(batch)s
), targets AS (
    SELECT e.id AS endpoint_id FROM webhook_endpoints e JOIN b ON e.project_id = b.project_id
    WHERE %(type)s = ANY(e.event_types)
    UNION ALL
    SELECT NULL FROM b WHERE b.callback_url IS NOT NULL
)
INSERT INTO webhook_deliveries (event_id, event_type, batch_id, owner_id, project_id,
    endpoint_id, payload, next_attempt_at, created_at)
SELECT %(event)s, %(type)s, b.id, b.owner_id, b.project_id, t.endpoint_id, %(payload)s,
    %(now)s, %(now)s
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


CLAIM = f"""
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
    CASE WHEN c.endpoint_id IS NULL THEN array_remove(ARRAY[b.callback_secret], NULL)
         ELSE {ACTIVE_SECRETS} END AS secrets
FROM claimed c JOIN batches b ON b.id = c.batch_id
LEFT JOIN webhook_endpoints e ON e.id = c.endpoint_id
ORDER BY c.id
"""
"""Lease due deliveries (see the module docstring) with what sending them needs: the URL and
the secrets that sign them now (see :data:`ACTIVE_SECRETS`)."""


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
            secrets=tuple(r["secrets"] or ()),
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
    conn: Conn, project_id: str | None, *, limit: int
) -> list[WebhookDelivery]:
    """The newest ``limit`` deliveries of ``project_id``'s events (every project's for
    None), to endpoints and to callback URLs."""
    cur = await conn.execute(
        f"""
        SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries
        WHERE (%(project)s::text IS NULL OR project_id = %(project)s)
        ORDER BY id DESC LIMIT %(limit)s
        """,
        {"project": project_id, "limit": limit},
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
