"""What work cost: a batch's cost and savings, a period's costs in day buckets (OpenAI's
``GET /v1/organization/costs``) and as CSV, shared by the API and the portal.

Amounts were fixed when the work was folded, at the prices then in force (see
:mod:`inferbatch.pricing`); here they are only added up. A key sees its project's costs;
an admin's sees every project's; either may group them per user (``user_id``). Days are
UTC days.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from inferbatch.db import costs as cost_rows
from inferbatch.db.costs import UsageFigures
from inferbatch.db.types import Pool
from inferbatch.domain import BatchRecord, Principal, project_filter
from inferbatch.errors import InvalidRequest
from inferbatch.protocol.costs import (
    GROUP_BY,
    CostAmount,
    CostsBucket,
    CostsPage,
    CostsResult,
    GroupBy,
)
from inferbatch.protocol.openai import BatchCost, CostSavings, GpuSeconds

DAY = timedelta(days=1)
EPOCH = date(1970, 1, 1)
MAX_TIME = 253_402_214_400
"""9999-01-01 in Unix seconds: the last time a period may name (dates end at year 9999)."""
MAX_BUCKETS = 180
"""Buckets per page at most (OpenAI's limit); the default is 7."""
CSV_PAGE = 5000
"""Rows read per statement while a CSV export streams."""
CSV_COLUMNS = (
    "day",
    "user_id",
    "user_name",
    "model",
    "pool",
    "currency",
    "requests",
    "deduplicated",
    "input_tokens",
    "output_tokens",
    "gpu_seconds",
    "cost",
    "spot_saved",
    "dedup_saved_gpu_seconds",
    "dedup_saved",
    "all_dedicated_cost",
)


def batch_cost(b: BatchRecord) -> BatchCost | None:
    """The ``cost`` extension of a batch: None until any of its GPU time was counted."""
    if b.cost_currency is None:
        return None
    spot_saved = b.all_dedicated_cost - b.gpu_cost - b.dedup_saved_cost
    return BatchCost(
        currency=b.cost_currency,
        amount=float(b.gpu_cost),
        gpu_seconds=GpuSeconds(
            spot=b.spot_gpu_seconds,
            dedicated=b.dedicated_gpu_seconds,
            dedup_saved=b.dedup_saved_gpu_seconds,
        ),
        saved=CostSavings(
            spot=float(spot_saved),
            dedup=float(b.dedup_saved_cost),
            total=float(spot_saved + b.dedup_saved_cost),
        ),
        all_dedicated_amount=float(b.all_dedicated_cost),
    )


@dataclass(frozen=True, slots=True)
class Period:
    """UTC days ``since`` (inclusive) to ``until`` (exclusive)."""

    since: date
    until: date

    @property
    def days(self) -> int:
        return (self.until - self.since).days

    @classmethod
    def of_times(cls, start_time: int, end_time: int | None, now: datetime) -> Period:
        """The days that hold ``start_time`` (inclusive) to ``end_time`` (exclusive; None:
        now), Unix seconds. Raises :class:`InvalidRequest` naming the bad one."""
        if not 0 <= start_time <= MAX_TIME:
            raise InvalidRequest(
                f"start_time must be Unix seconds, 0 to {MAX_TIME}.", param="start_time"
            )
        if end_time is not None and not 0 <= end_time <= MAX_TIME:
            raise InvalidRequest(
                f"end_time must be Unix seconds, 0 to {MAX_TIME}.", param="end_time"
            )
        end = int(now.timestamp()) + 1 if end_time is None else end_time
        if end <= start_time:
            raise InvalidRequest("end_time must be after start_time.", param="end_time")
        since = EPOCH + timedelta(days=start_time // 86400)
        until = EPOCH + timedelta(days=-(-end // 86400))
        return cls(since, until)

    @classmethod
    def of_dates(cls, first: date, last: date) -> Period:
        """``first`` to ``last``, both days included."""
        if last < first:
            raise InvalidRequest("The last day comes before the first.", param="to")
        return cls(first, last + DAY)


def parse_group_by(values: Sequence[str]) -> frozenset[GroupBy]:
    """``group_by`` values (repeated, or comma-separated) as a set; InvalidRequest for one
    that is not ``user_id`` or ``line_item``."""
    out: set[GroupBy] = set()
    for value in (v.strip() for raw in values for v in raw.split(",")):
        if not value:
            continue
        if value == "project_id":
            raise InvalidRequest(
                "group_by project_id is not supported; group by user_id or line_item.",
                param="group_by",
            )
        if value not in GROUP_BY:
            raise InvalidRequest(
                f"group_by {value!r}: use user_id and/or line_item.", param="group_by"
            )
        out.add(value)
    return frozenset(out)


def _unix(day: date) -> int:
    return (day - EPOCH).days * 86400


def _result(f: UsageFigures, group_by: frozenset[GroupBy]) -> CostsResult:
    spot_saved = f.spot_saved_cost
    line_item = "line_item" in group_by
    return CostsResult(
        amount=CostAmount(value=float(f.cost), currency=f.currency),
        line_item=f"{f.model}, {f.pool}" if line_item else None,
        user_id=f.owner_id if "user_id" in group_by else None,
        quantity=f.gpu_seconds if line_item else None,
        quantity_unit="duration_seconds" if line_item else None,
        gpu_seconds=f.gpu_seconds,
        saved=CostSavings(
            spot=float(spot_saved),
            dedup=float(f.dedup_saved_cost),
            total=float(spot_saved + f.dedup_saved_cost),
        ),
        all_dedicated_amount=float(f.all_dedicated_cost),
        requests=f.requests,
    )


async def costs_page(
    pool: Pool,
    user: Principal,
    period: Period,
    *,
    group_by: frozenset[GroupBy] = frozenset(),
    limit: int = 7,
    page: str | None = None,
) -> CostsPage:
    """One page of day buckets of ``period`` (every day, with or without costs), from the
    first day or the day ``page`` names, ``limit`` buckets at most."""
    if not 1 <= limit <= MAX_BUCKETS:
        raise InvalidRequest(f"limit must be 1 to {MAX_BUCKETS}.", param="limit")
    first = period.since
    if page is not None:
        try:
            at = int(page)
            first = EPOCH + timedelta(days=at // 86400)
        except (ValueError, OverflowError):
            raise InvalidRequest("page is not a next_page value.", param="page") from None
        if not period.since <= first < period.until or at % 86400:
            raise InvalidRequest("page is outside start_time to end_time.", param="page")
    last = min(first + limit * DAY, period.until)
    async with pool.connection() as conn:
        figures = await cost_rows.by_day(
            conn,
            project_filter(user),
            first,
            last,
            by_user="user_id" in group_by,
            by_line_item="line_item" in group_by,
        )
    by_day: dict[date, list[CostsResult]] = {}
    for f in figures:
        by_day.setdefault(f.day, []).append(_result(f, group_by))
    buckets = [
        CostsBucket(start_time=_unix(day), end_time=_unix(day + DAY), results=by_day.get(day, []))
        for day in (first + i * DAY for i in range((last - first).days))
    ]
    more = last < period.until
    return CostsPage(data=buckets, has_more=more, next_page=str(_unix(last)) if more else None)


async def period_totals(
    pool: Pool, user: Principal, period: Period, *, by_user: bool
) -> list[UsageFigures]:
    """The period's figures per day (and per user when ``by_user``), for the portal."""
    async with pool.connection() as conn:
        return await cost_rows.by_day(
            conn, project_filter(user), period.since, period.until, by_user=by_user
        )


def _text(value: str | None) -> str:
    # a spreadsheet runs a cell that starts like a formula: model names come from input
    # files, so such text is sent quoted as text
    if value and value[0] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value or ""


def _amount(value: Decimal) -> str:
    # every digit the rollup holds: a sum of rows is the sum of their amounts
    return format(value.normalize(), "f")


async def csv_lines(pool: Pool, user: Principal, period: Period) -> AsyncIterator[str]:
    """The period as CSV, one row per day x user x model x pool x currency: the header
    first, then rows in that order, read :data:`CSV_PAGE` at a time (a connection is
    held only while a page is read, never while the client reads)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def take() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield take()
    after: cost_rows.UsageKey | None = None
    while True:
        async with pool.connection() as conn:
            page = await cost_rows.rows(
                conn, project_filter(user), period.since, period.until, after=after, limit=CSV_PAGE
            )
        for f in page:
            writer.writerow(
                (
                    f.day.isoformat(),
                    _text(f.owner_id),
                    _text(f.user_name),
                    _text(f.model),
                    f.pool,
                    f.currency,
                    f.requests,
                    f.deduplicated,
                    f.input_tokens,
                    f.output_tokens,
                    repr(f.gpu_seconds),
                    _amount(f.cost),
                    _amount(f.spot_saved_cost),
                    repr(f.dedup_saved_gpu_seconds),
                    _amount(f.dedup_saved_cost),
                    _amount(f.all_dedicated_cost),
                )
            )
        if page:
            yield take()
        if len(page) < CSV_PAGE:
            return
        last = page[-1]
        assert last.project_id and last.owner_id and last.model and last.pool
        after = (last.day, last.project_id, last.owner_id, last.model, last.pool, last.currency)


def csv_filename(period: Period) -> str:
    return f"costs_{period.since.isoformat()}_{(period.until - DAY).isoformat()}.csv"


def today(now: datetime) -> date:
    return now.astimezone(UTC).date()
