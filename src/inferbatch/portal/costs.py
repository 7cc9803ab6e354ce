"""The Costs page: GPU time, its cost and the savings of spot capacity and deduplication
per UTC day of a period (and per user, for admins), with the period's totals and its CSV
export. The figures are the daily rollup the counter fold keeps (never a scan of the
requests), priced when the work was counted."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from inferbatch.db.costs import UsageFigures
from inferbatch.errors import InvalidRequest
from inferbatch.portal.web import PageDep, PortalRoute
from inferbatch.services import costs as cost_service
from inferbatch.services.costs import Period

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

DEFAULT_DAYS = 30
MAX_DAYS = 366
"""The longest period the page shows (the CSV export takes any)."""


@dataclass
class Totals:
    """A period's figures added up, in one currency."""

    currency: str
    cost: Decimal = Decimal(0)
    spot_saved: Decimal = Decimal(0)
    dedup_saved: Decimal = Decimal(0)
    all_dedicated: Decimal = Decimal(0)
    gpu_seconds: float = 0.0
    dedup_saved_gpu_seconds: float = 0.0
    requests: int = 0
    tokens: int = 0
    days: set[date] = field(default_factory=set)

    def add(self, f: UsageFigures) -> None:
        self.cost += f.cost
        self.spot_saved += f.spot_saved_cost
        self.dedup_saved += f.dedup_saved_cost
        self.all_dedicated += f.all_dedicated_cost
        self.gpu_seconds += f.gpu_seconds
        self.dedup_saved_gpu_seconds += f.dedup_saved_gpu_seconds
        self.requests += f.requests
        self.tokens += f.input_tokens + f.output_tokens
        self.days.add(f.day)


def _day(value: str | None, default: date, name: str) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name} is not a date (YYYY-MM-DD).", param=name) from None


def period_of(request: Request, today: date, max_days: int | None = MAX_DAYS) -> Period:
    """The ``from`` and ``to`` days of the query (both included; default: the last 30
    days), at most ``max_days`` long."""
    last = _day(request.query_params.get("to"), today, "to")
    first = _day(request.query_params.get("from"), last - timedelta(days=DEFAULT_DAYS - 1), "from")
    period = Period.of_dates(first, last)
    if max_days is not None and period.days > max_days:
        raise InvalidRequest(
            f"Show at most {max_days} days here; the CSV export takes any period.", param="from"
        )
    return period


def money(value: Decimal | float, currency: str) -> str:
    """``12.34 USD``; small amounts keep four decimals so that they do not read as 0."""
    amount = float(value)
    places = 2 if abs(amount) >= 1 or amount == 0 else 4
    return f"{amount:,.{places}f} {currency.upper()}"


@router.get("/costs")
async def costs_page(request: Request, page: PageDep) -> HTMLResponse:
    today = cost_service.today(page.st.now())
    period = period_of(request, today)
    by_user = page.user.is_admin
    figures = await cost_service.period_totals(page.st.db, page.user, period, by_user=by_user)
    totals: dict[str, Totals] = {}
    for f in figures:
        totals.setdefault(f.currency, Totals(f.currency)).add(f)
    return page.render(
        "costs.html",
        period=period,
        first=period.since,
        last=period.until - timedelta(days=1),
        rows=sorted(figures, key=lambda f: (f.day, f.user_name or "", f.currency), reverse=True),
        totals=list(totals.values()),
        by_user=by_user,
        money=money,
        prices=page.st.settings.price_table,
    )


@router.get("/costs.csv")
async def costs_csv(request: Request, page: PageDep) -> Response:
    today = cost_service.today(page.st.now())
    period = period_of(request, today, max_days=None)
    return StreamingResponse(
        cost_service.csv_lines(page.st.db, page.user, period),
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="{cost_service.csv_filename(period)}"'
        },
    )
