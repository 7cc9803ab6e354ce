"""The embedded PostgreSQL of ``inferbatch up`` comes back after it was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from inferbatch.db.connector import stop_embedded

pytestmark = pytest.mark.integration


def _start(data_dir: Path) -> str:
    """The server's URL from ``embedded_url`` in a process of its own, as each start of
    ``inferbatch up`` is."""
    code = "import sys, pathlib; from inferbatch.db.connector import embedded_url; "
    code += "print(embedded_url(pathlib.Path(sys.argv[1])))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _postmaster(data_dir: Path) -> int:
    return int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])


def test_a_killed_embedded_server_is_started_again_on_the_next_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    try:
        with psycopg.connect(_start(data_dir)) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (7)")
            conn.commit()
        pid = _postmaster(data_dir)
        os.kill(pid, signal.SIGKILL)  # no shutdown: postmaster.pid stays behind
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        assert (data_dir / "pg" / "postmaster.pid").exists()

        with psycopg.connect(_start(data_dir)) as conn:
            row = conn.execute("SELECT n FROM kept").fetchone()
        assert row == (7,)
        assert _postmaster(data_dir) != pid
    finally:
        stop_embedded(data_dir)
