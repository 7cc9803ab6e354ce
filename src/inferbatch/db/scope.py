"""Row-level security for the API: every transaction it makes for a request acts as the
role ``inferbatch_api`` in the request's project (migration 0022 has the policies).

The API's pool is a :class:`ScopedPool`: each connection it hands out starts its
transaction with one statement that takes the role and sets the project, both
transaction-local (``set_config(..., true)``, i.e. ``SET LOCAL``), so nothing outlives the
transaction and a transaction-mode pooler stays correct. Which principal a transaction acts
for is the one authentication bound to the running request (:func:`act_as`, called by the
API's and the portal's authentication), kept in a context variable so that every service
the routes call with ``st.db`` is scoped without being told: a connection taken before any
principal is bound sees no tenant row at all. What must run before a principal exists
(authentication itself, the audit trail, health and metrics) asks for
:meth:`ScopedPool.unscoped` by name.

The scheduler, workers, migrations and the CLI open plain pools and act as the connecting
user, the tables' owner, whom the policies do not restrict.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from inferbatch.db.types import Conn
from inferbatch.domain import Principal

API_ROLE = "inferbatch_api"

_acting: ContextVar[Principal | None] = ContextVar("inferbatch_acting", default=None)

ENTER = """
SELECT set_config('role', %(role)s, true),
    set_config('inferbatch.project_id', %(project)s, true),
    set_config('inferbatch.all_projects', %(all)s, true),
    set_config('inferbatch.user_id', %(user)s, true)
"""
"""Take the API's role and set the project for the rest of the transaction."""


def act_as(principal: Principal) -> None:
    """Bind ``principal`` to the running request: its later transactions see its project
    (every project for an admin)."""
    _acting.set(principal)


@contextmanager
def request_scope() -> Iterator[None]:
    """A request's span: no principal bound at its start, none left after it (a test's
    in-process client runs requests in one task, one after the other)."""
    token = _acting.set(None)
    try:
        yield
    finally:
        _acting.reset(token)


def settings_of(principal: Principal | None) -> dict[str, str]:
    """The values :data:`ENTER` sets for ``principal`` (None: no project, nothing seen)."""
    if principal is None:
        return {"role": API_ROLE, "project": "", "all": "off", "user": ""}
    return {
        "role": API_ROLE,
        "project": principal.project_id,
        "all": "on" if principal.is_admin else "off",
        "user": "" if principal.service_account else principal.id,
    }


async def enter(conn: Conn, principal: Principal | None) -> None:
    """Start ``conn``'s transaction as the API's role acting for ``principal``."""
    await conn.execute(ENTER, settings_of(principal))


class ScopedPool(AsyncConnectionPool[AsyncConnection[dict[str, Any]]]):
    """The API's pool: :meth:`connection` is scoped to the request's principal;
    ``row_security=False`` (``INFERBATCH_ROW_SECURITY=off``) leaves it as a plain pool."""

    def __init__(self, *args: Any, row_security: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.row_security = row_security

    # ``timeout`` as psycopg_pool's own ``connection`` takes it
    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Conn]:  # noqa: ASYNC109
        async with super().connection(timeout) as conn:
            if self.row_security:
                await enter(conn, _acting.get())
            yield conn

    @asynccontextmanager
    async def unscoped(self, timeout: float | None = None) -> AsyncIterator[Conn]:  # noqa: ASYNC109
        """A connection acting as the connecting user, for what runs before the request's
        project is known (authentication) or for the system (the audit trail, health)."""
        async with super().connection(timeout) as conn:
            yield conn
