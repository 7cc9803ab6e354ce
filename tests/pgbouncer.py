"""A real PgBouncer in transaction pooling mode in front of the test database server.

``pgbouncer(server_url)`` starts the system's ``pgbouncer`` (Debian package ``pgbouncer``;
``make system-deps`` installs it) with its own ini and userlist in a temporary directory, on
a free port, ``pool_mode = transaction``, forwarding every database name to the server of
``server_url``: the embedded test server (a Unix socket) or an external one such as the
machine's PostgreSQL 15 (TCP). ``PgBouncer.pooled(url)`` turns a direct URL of any database
on that server into the same database through the pooler.

PgBouncer refuses to run as root: as root it is started with ``-u`` as the owner of the
server's socket directory (the embedded server's user), or as ``nobody`` for a TCP server.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from inferbatch.engines.local import free_port

SOCKET_PARAMS = {"host", "hostaddr", "port"}
"""Query parameters of a URL that name where the server is (replaced by the pooler's)."""


def pgbouncer_binary() -> str:
    """The pgbouncer executable (Debian installs it in /usr/sbin, often not on PATH)."""
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("pgbouncer is not installed: run `make system-deps`")


def pgbouncer_version() -> tuple[int, ...]:
    """The installed PgBouncer's version, e.g. (1, 18, 0)."""
    out = subprocess.run(
        [pgbouncer_binary(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"PgBouncer (\d+(?:\.\d+)+)", out)
    if match is None:
        raise RuntimeError(f"unexpected pgbouncer --version output: {out!r}")
    return tuple(int(part) for part in match.group(1).split("."))


@dataclass(frozen=True)
class _Server:
    host: str
    """A host name, an address, or a Unix socket directory (starting with /)."""
    port: int
    user: str
    password: str


def _server(url: str) -> _Server:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or "/var/run/postgresql"
    port = int(query.get("port") or parts.port or 5432)
    user = unquote(parts.username or "") or query.get("user") or "postgres"
    password = unquote(parts.password or "") or query.get("password") or ""
    return _Server(host, port, user, password)


@dataclass
class PgBouncer:
    """A running pgbouncer; ``pooled`` gives URLs through it."""

    port: int
    pool_size: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    admin_url: str
    """A direct URL of the server, as the admin user (its credentials reach the console)."""

    def pooled(self, url: str) -> str:
        """``url`` (a direct URL of any database on the server) through this pooler."""
        parts = urlsplit(url)
        server = _server(url)
        auth = quote(server.user, safe="")
        if server.password:
            auth += ":" + quote(server.password, safe="")
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in SOCKET_PARAMS]
        return urlunsplit(
            parts._replace(netloc=f"{auth}@127.0.0.1:{self.port}", query=urlencode(query))
        )

    def show(self, what: str) -> list[dict[str, Any]]:
        """A ``SHOW`` command of the admin console (``CLIENTS``, ``POOLS``, ``SERVERS``)."""
        url = urlunsplit(urlsplit(self.pooled(self.admin_url))._replace(path="/pgbouncer"))
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(f"SHOW {what}").fetchall()

    def log(self) -> str:
        return (self.workdir / "pgbouncer.log").read_text(errors="replace")


def _ini(server: _Server, port: int, workdir: Path, pool_size: int, max_clients: int) -> str:
    lines = [
        "[databases]",
        # any database name: the server's database of the same name
        f"* = host={server.host} port={server.port}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {workdir / 'userlist.txt'}",
        f"admin_users = {server.user}",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        "min_pool_size = 0",
        "reserve_pool_size = 0",
        f"max_client_conn = {max_clients}",
        "ignore_startup_parameters = extra_float_digits",
        "server_login_retry = 1",
        "log_connections = 0",
        "log_disconnections = 0",
    ]
    if pgbouncer_version() >= (1, 21):
        # PgBouncer 1.21+ can track prepared statements when this is above 0; keep it off so
        # that the tests see what any transaction pooler without that feature does
        lines.append("max_prepared_statements = 0")
    return "\n".join(lines) + "\n"


def _run_as(server: _Server) -> list[str]:
    """``-u USER`` when running as root (PgBouncer will not), else nothing."""
    if os.geteuid() != 0:
        return []
    if server.host.startswith("/"):
        owner = pwd.getpwuid(os.stat(server.host).st_uid).pw_name
        if owner != "root":
            return ["-u", owner]
    return ["-u", "nobody"]


def _wait_ready(bouncer: PgBouncer, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if bouncer.proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {bouncer.proc.returncode}:\n{bouncer.log()}")
        try:
            with psycopg.connect(bouncer.pooled(url), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not answer: {exc}\n{bouncer.log()}") from exc
            time.sleep(0.1)


@contextmanager
def pgbouncer(
    server_url: str, *, pool_size: int = 8, max_clients: int = 500
) -> Iterator[PgBouncer]:
    """Run a transaction-pooling PgBouncer in front of the server of ``server_url`` with
    ``pool_size`` server connections per database and user; stop it on exit."""
    server = _server(server_url)
    workdir = Path(tempfile.mkdtemp(prefix="ibbouncer-"))
    workdir.chmod(0o755)  # readable by the unprivileged user it runs as
    port = free_port()
    (workdir / "userlist.txt").write_text(f'"{server.user}" "{server.password}"\n')
    (workdir / "pgbouncer.ini").write_text(_ini(server, port, workdir, pool_size, max_clients))
    for name in ("userlist.txt", "pgbouncer.ini"):
        (workdir / name).chmod(0o644)
    with open(workdir / "pgbouncer.log", "wb") as log:
        proc = subprocess.Popen(
            [pgbouncer_binary(), *_run_as(server), str(workdir / "pgbouncer.ini")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    bouncer = PgBouncer(port, pool_size, workdir, proc, server_url)
    try:
        _wait_ready(bouncer, server_url, timeout=15)
        yield bouncer
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # immediate shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
