"""What a period cost: reads of ``usage_daily``, the rollup the counter fold keeps per UTC
day, project, owner, model, pool and currency (see :mod:`inferbatch.db.counters`).

A period's figures read only these rows (a few per user and day), never the requests,
so a read's cost follows the days and users asked for, not the work done in them.
Figures are as of the leader's last fold (each scheduler tick). ``project`` is the project
id to restrict to, or None for every project (admins). Statements are assembled only from
the fixed fragments below; user input only ever travels as parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from inferbatch.db.types import Conn


@dataclass(frozen=True, slots=True)
class UsageFigures:
    """What one group of usage rows adds up to. Amounts are in ``currency``, priced when
    the work was folded; GPU time in GPU-seconds."""

    day: date
    currency: str
    owner_id: str | None
    """Set when grouped by user (or reading rows one by one)."""
    project_id: str | None
    user_name: str | None
    model: str | None
    """Set with ``pool`` when grouped by line item."""
    pool: str | None
    requests: int
    deduplicated: int
    input_tokens: int
    output_tokens: int
    gpu_seconds: float
    dedup_saved_gpu_seconds: float
    cost: Decimal
    dedup_saved_cost: Decimal
    all_dedicated_cost: Decimal

    @property
    def spot_saved_cost(self) -> Decimal:
        """What spot capacity saved: all-dedicated less the cost and the dedup savings."""
        return self.all_dedicated_cost - self.cost - self.dedup_saved_cost

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UsageFigures:
        return cls(
            day=row["day"],
            currency=row["currency"],
            owner_id=row.get("owner_id"),
            project_id=row.get("project_id"),
            user_name=row.get("user_name"),
            model=row.get("model"),
            pool=row.get("pool"),
            requests=int(row["requests"]),
            deduplicated=int(row["deduplicated"]),
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            gpu_seconds=float(row["gpu_seconds"]),
            dedup_saved_gpu_seconds=float(row["dedup_saved_gpu_seconds"]),
            cost=Decimal(row["cost"]),
            dedup_saved_cost=Decimal(row["dedup_saved_cost"]),
            all_dedicated_cost=Decimal(row["all_dedicated_cost"]),
        )


_SUMS = """sum(u.requests)::bigint AS requests, sum(u.deduplicated)::bigint AS deduplicated,
    sum(u.input_tokens)::bigint AS input_tokens, sum(u.output_tokens)::bigint AS output_tokens,
    sum(u.gpu_seconds) AS gpu_seconds, sum(u.dedup_saved_gpu_seconds) AS dedup_saved_gpu_seconds,
    sum(u.cost) AS cost, sum(u.dedup_saved_cost) AS dedup_saved_cost,
    sum(u.all_dedicated_cost) AS all_dedicated_cost"""
_PERIOD = """u.day >= %(since)s AND u.day < %(until)s
    AND (%(project)s::text IS NULL OR u.project_id = %(project)s)"""


async def by_day(
    conn: Conn,
    project: str | None,
    since: date,
    until: date,
    *,
    by_user: bool = False,
    by_line_item: bool = False,
) -> list[UsageFigures]:
    """The days ``since`` (inclusive) to ``until`` (exclusive) that had usage, one row per
    day and currency, and per user and per (model, pool) when asked; in day order."""
    keys = ["u.day", "u.currency"]
    if by_user:
        keys.append("u.owner_id")
    if by_line_item:
        keys += ["u.model", "u.pool"]
    group = ", ".join(keys)
    name = ", min(us.name) AS user_name" if by_user else ""
    join = "LEFT JOIN users us ON us.id = u.owner_id" if by_user else ""
    cur = await conn.execute(
        f"""
        SELECT {group}{name}, {_SUMS}
        FROM usage_daily u {join}
        WHERE {_PERIOD}
        GROUP BY {group} ORDER BY {group}
        """,
        {"since": since, "until": until, "project": project},
    )
    return [UsageFigures.from_row(r) for r in await cur.fetchall()]


UsageKey = tuple[date, str, str, str, str, str]
"""A row's key in ``usage_daily`` order: (day, project_id, owner_id, model, pool,
currency)."""


async def rows(
    conn: Conn,
    project: str | None,
    since: date,
    until: date,
    *,
    after: UsageKey | None = None,
    limit: int = 5000,
) -> list[UsageFigures]:
    """Up to ``limit`` rows of the period one by one (day x user x model x pool x
    currency), in key order after ``after``: the CSV export reads them page by page."""
    cur = await conn.execute(
        f"""
        SELECT u.day, u.project_id, u.owner_id, us.name AS user_name, u.model, u.pool,
            u.currency, u.requests, u.deduplicated, u.input_tokens, u.output_tokens,
            u.gpu_seconds, u.dedup_saved_gpu_seconds, u.cost, u.dedup_saved_cost,
            u.all_dedicated_cost
        FROM usage_daily u LEFT JOIN users us ON us.id = u.owner_id
        WHERE {_PERIOD}
          AND (%(after_day)s::date IS NULL
              OR (u.day, u.project_id, u.owner_id, u.model, u.pool, u.currency)
              > (%(after_day)s, %(after_project)s, %(after_owner)s, %(after_model)s,
                 %(after_pool)s, %(after_currency)s))
        ORDER BY u.day, u.project_id, u.owner_id, u.model, u.pool, u.currency
        LIMIT %(limit)s
        """,
        _key_params(after) | {"since": since, "until": until, "project": project, "limit": limit},
    )
    return [UsageFigures.from_row(r) for r in await cur.fetchall()]


def _key_params(after: Sequence[Any] | None) -> dict[str, Any]:
    names = (
        "after_day",
        "after_project",
        "after_owner",
        "after_model",
        "after_pool",
        "after_currency",
    )
    return dict(zip(names, after or (None,) * len(names), strict=True))
