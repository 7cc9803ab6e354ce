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
