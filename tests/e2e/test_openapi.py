"""The OpenAPI document is the API: schemathesis sends generated requests (valid and
invalid) to every documented operation of a real api process, and each answer must be a
documented status with a body matching its schema, never a 5xx."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import cloned_database
from tests.helpers import chat_file
from tests.stack import ADMIN_KEY, Stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


@pytest.fixture(scope="module")
def contract_stack(
    server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with cloned_database(server_url, template_url) as url:
        s = Stack(url, tmp_path_factory.mktemp("contract")).start()
        try:
            # something to find: a file and a batch, so lookups are not all misses
            client = s.client()
            f = client.files.create(file=("in.jsonl", chat_file(3)), purpose="batch")
            client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            yield s
        finally:
            s.close()


def test_every_operation_answers_as_documented(contract_stack: Stack, tmp_path: Path) -> None:
    url = contract_stack.url
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{url}/openapi.json",
            "--url",
            url,
            "--header",
            f"Authorization: Bearer {ADMIN_KEY}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            "20",
            "--seed",
            "1",
            "--generation-deterministic",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        cwd=tmp_path,
    )
    print(run.stdout[-20000:])
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]


def _project_key(stack: Stack, name: str) -> str:
    """The key of a member service account of a new project called ``name``."""
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    base = stack.url + "/v1/organization/projects"
    project = httpx.post(base, headers=admin, json={"name": name}).json()["id"]
    made = httpx.post(
        f"{base}/{project}/service_accounts", headers=admin, json={"name": f"{name}-bot"}
    )
    assert made.status_code == 200, made.text
    key: str = made.json()["api_key"]["value"]
    return key


@pytest.fixture(scope="module")
def two_projects(
    server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str, list[str]]]:
    """A live api with projects A and B: A's key, and the ids of B's objects."""
    env = {
        "INFERBATCH_AUTH_FAILURES_PER_ADDRESS": "100000",
        "INFERBATCH_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    with cloned_database(server_url, template_url) as url:
        s = Stack(url, tmp_path_factory.mktemp("tenants"), env=env).start(spot=0, dedicated=0)
        try:
            mine, theirs = _project_key(s, "a"), _project_key(s, "b")
            other = s.client(theirs)
            f = other.files.create(file=("in.jsonl", chat_file(2)), purpose="batch")
            b = other.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            hook = httpx.post(
                s.url + "/v1/webhook_endpoints",
                headers={"authorization": f"Bearer {theirs}"},
                json={
                    "name": "h",
                    "url": "http://127.0.0.1:9/h",
                    "event_types": ["batch.completed"],
                },
            ).json()["id"]
            # and something of A's own to find, so the run's lookups are not all misses
            own = s.client(mine).files.create(file=("in.jsonl", chat_file(2)), purpose="batch")
            s.client(mine).batches.create(
                input_file_id=own.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            yield s, mine, [f.id, b.id, hook]
        finally:
            s.close()


def test_a_stateful_run_never_sees_another_projects_objects(
    two_projects: tuple[Stack, str, list[str]], tmp_path: Path
) -> None:
    stack, key, foreign = two_projects
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{stack.url}/openapi.json",
            "--url",
            stack.url,
            "--header",
            f"Authorization: Bearer {key}",
            "--phases",
            "stateful",
            "--checks",
            "not_a_server_error,no_other_projects_ids",
            "--max-examples",
            "15",
            "--max-time",
            "45",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.e2e.openapi_hooks",
            "INFERBATCH_FOREIGN_IDS": ",".join(foreign),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
        cwd=tmp_path,
    )
    print(run.stdout[-20000:])
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "Stateful" in run.stdout  # the phase ran, with links to follow


def test_the_document_describes_the_api(contract_stack: Stack, tmp_path: Path) -> None:
    doc = httpx.get(contract_stack.url + "/openapi.json").json()
    create = doc["paths"]["/v1/batches"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/BatchCreateRequest")
    assert create["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/CreatedBatch"
    )
    assert "409" in doc["paths"]["/v1/batches/{batch_id}/cancel"]["post"]["responses"]
    assert "multipart/form-data" in doc["paths"]["/v1/files"]["post"]["requestBody"]["content"]
