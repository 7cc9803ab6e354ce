"""The audit log of a live api server: changes made with the official SDK, the
Administration API and the portal are read back from ``/v1/organization/audit_logs``, and
no key, webhook secret, session cookie or Authorization header value appears in any audit
row or in the server's own log, written at DEBUG."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import psycopg
import pytest

from inferbatch.domain import DEFAULT_PROJECT_ID
from tests.helpers import chat_line
from tests.stack import ADMIN_KEY, Stack

pytestmark = pytest.mark.e2e


def _csrf(html: str) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    return token.group(1)


def test_a_live_server_records_changes_and_never_writes_a_secret(
    db_url: str, tmp_path: Path
) -> None:
    stack = Stack(
        db_url,
        tmp_path,
        engine_url="http://127.0.0.1:9/v1",
        env={"INFERBATCH_LOG_LEVEL": "DEBUG", "INFERBATCH_WEBHOOK_ALLOW_PRIVATE": "true"},
    )
    try:
        stack.start(spot=0, dedicated=0, scheduler=False)
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        secrets = [ADMIN_KEY]
        with httpx.Client(base_url=stack.url, timeout=10) as http:
            account = http.post(
                f"/v1/organization/projects/{DEFAULT_PROJECT_ID}/service_accounts",
                headers=admin,
                json={"name": "robot", "role": "owner"},
            ).json()
            robot_key = account["api_key"]["value"]
            secrets.append(robot_key)

            sdk = stack.client(robot_key)
            upload = sdk.files.create(
                file=io.BytesIO(chat_line("a").encode() + b"\n"), purpose="batch"
            )
            batch = sdk.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            sdk.batches.cancel(batch.id)

            hook = http.post(
                "/v1/webhook_endpoints",
                headers={"authorization": f"Bearer {robot_key}"},
                json={
                    "url": "http://127.0.0.1:9/h",
                    "name": "h",
                    "event_types": ["batch.completed"],
                },
            ).json()
            secrets.append(hook["signing_secret"])

            form = http.get("/login")
            signed_in = http.post(
                "/login", data={"api_key": ADMIN_KEY, "csrf_token": _csrf(form.text)}
            )
            assert signed_in.status_code == 303
            secrets += list(http.cookies.values())
            http.post("/logout", data={"csrf_token": _csrf(http.get("/").text)})
            http.cookies.clear()
            form = http.get("/login")
            http.post("/login", data={"api_key": robot_key + "x", "csrf_token": _csrf(form.text)})

            logs = http.get(
                "/v1/organization/audit_logs", headers=admin, params={"limit": 100}
            ).json()
            by_robot = http.get(
                "/v1/organization/audit_logs",
                headers={"authorization": f"Bearer {robot_key}"},
                params={"resource_ids[]": batch.id},
            ).json()
    finally:
        stack.close()

    types = [e["type"] for e in logs["data"]]
    assert types == [
        "login.failed",
        "logout.succeeded",
        "login.succeeded",
        "webhook_endpoint.created",
        "batch.cancelled",
        "batch.created",
        "file.created",
        "service_account.created",
    ]
    created = logs["data"][5]
    assert created["actor"]["api_key"]["type"] == "service_account"
    assert created["actor"]["api_key"]["service_account"] == {"id": account["id"]}
    assert created["actor"]["api_key"]["user_agent"].startswith("OpenAI/Python")
    assert created["actor"]["api_key"]["ip_address"] == "127.0.0.1"
    assert [e["type"] for e in by_robot["data"]] == ["batch.cancelled", "batch.created"]

    with psycopg.connect(db_url) as conn:
        dump = "\n".join(r[0] for r in conn.execute("SELECT a::text FROM audit_logs a"))
    server_log = stack.log("api")
    assert "DEBUG" in server_log
    for secret in secrets:
        assert secret and secret not in dump
        assert secret not in server_log
