"""The CLI's projects and keys commands, run as real subprocesses against the test
database; what they make is checked the way the API would see it."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inferbatch.db.types import Pool
from inferbatch.errors import Unauthorized
from inferbatch.services import projects

pytestmark = pytest.mark.integration


def _cli(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"INFERBATCH_DATABASE_URL": db_url, "INFERBATCH_DATA_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "inferbatch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _out(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


async def test_projects_and_keys_made_by_the_cli_act_with_their_role_until_revoked(
    pool: Pool, db_url: str, tmp_path: Path
) -> None:
    project_id = _out(_cli(db_url, tmp_path, "projects", "create", "Research"))
    assert project_id.startswith("proj_")
    listed = _out(_cli(db_url, tmp_path, "projects", "list")).split("\t")
    assert listed == [project_id, "active", "Research"]
    assert "proj_default\tactive" in _cli(db_url, tmp_path, "projects", "list").stdout

    added = _out(
        _cli(db_url, tmp_path, "projects", "add-user", "Research", "erin", "--role", "owner")
    )
    assert added.endswith(f"is owner of {project_id}")
    owner_key = _out(
        _cli(db_url, tmp_path, "keys", "create", "--user", "erin", "--project", project_id)
    )
    reader_key = _out(
        _cli(
            db_url, tmp_path, "keys", "create", "--user", "fred", "--project", "Research",
            "--role", "reader",
        )
    )  # fmt: skip
    now = datetime.now(UTC)
    async with pool.connection() as conn:
        owner = await projects.authenticate(conn, owner_key, now)
        reader = await projects.authenticate(conn, reader_key, now)
    # a member keeps the role it has; a new one gets the one asked for
    assert (owner.name, owner.project_id, owner.role) == ("erin", project_id, "owner")
    assert (reader.name, reader.project_id, reader.role) == ("fred", project_id, "reader")

    assert (
        _out(_cli(db_url, tmp_path, "keys", "revoke", reader_key[:7]))
        == f"revoked {reader_key[:7]}"
    )
    async with pool.connection() as conn:
        with pytest.raises(Unauthorized) as refused:
            await projects.authenticate(conn, reader_key, now)
        assert refused.value.code == "api_key_revoked"
        assert (await projects.authenticate(conn, owner_key, now)).role == "owner"
    again = _cli(db_url, tmp_path, "keys", "revoke", reader_key[:7])
    assert again.returncode == 1 and "no unrevoked key" in again.stderr


def test_the_cli_refuses_an_unknown_project_or_role_and_makes_nothing(
    db_url: str, tmp_path: Path
) -> None:
    unknown = _cli(db_url, tmp_path, "keys", "create", "--user", "erin", "--project", "nope")
    assert unknown.returncode == 1 and "No project 'nope'" in unknown.stderr
    assert unknown.stdout == ""
    bad_role = _cli(
        db_url, tmp_path, "projects", "add-user", "proj_default", "erin", "--role", "boss"
    )
    assert bad_role.returncode == 2 and "--role must be one of" in bad_role.stderr
    both = _cli(db_url, tmp_path, "keys", "create", "--user", "a", "--service-account", "b")
    assert both.returncode == 2
    assert _cli(db_url, tmp_path, "projects", "list").stdout.count("\n") == 1
