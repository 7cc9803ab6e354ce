"""Connection types shared by the data-access modules."""

from __future__ import annotations

from typing import Any, TypeAlias

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

Conn: TypeAlias = AsyncConnection[dict[str, Any]]
Pool: TypeAlias = AsyncConnectionPool[AsyncConnection[dict[str, Any]]]
