"""Projects and roles end to end: real api, scheduler and worker processes; projects and
service accounts made through the Administration API, objects used through the official
``openai`` SDK with each project's keys."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file
from tests.stack import ADMIN_KEY, Stack

pytestmark = pytest.mark.e2e


def _admin(stack: Stack, path: str, body: dict[str, Any] | None = None) -> Any:
    answer = httpx.request(
        "POST" if body is not None else "GET",
        f"{stack.url}/v1/organization/projects{path}",
        json=body,
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _service_key(stack: Stack, project_id: str, name: str, role: str) -> str:
    made = _admin(stack, f"/{project_id}/service_accounts", {"name": name, "role": role})
    key: str = made["api_key"]["value"]
    return key


def test_roles_and_projects_hold_through_the_openai_sdk(stack: Stack) -> None:
    a = _admin(stack, "", {"name": "A"})["id"]
    b = _admin(stack, "", {"name": "B"})["id"]
    writer = stack.client(_service_key(stack, a, "writer", "member"))
    reader = stack.client(_service_key(stack, a, "reader", "reader"))
    stranger = stack.client(_service_key(stack, b, "stranger", "member"))

    uploaded = writer.files.create(file=("in.jsonl", chat_file(3)), purpose="batch")
    batch = writer.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.PermissionDeniedError) as refused:
        reader.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert refused.value.status_code == 403
    assert refused.value.code == "insufficient_permissions"
    with pytest.raises(openai.PermissionDeniedError):
        reader.batches.cancel(batch.id)
    assert reader.batches.retrieve(batch.id).id == batch.id  # readers read

    with pytest.raises(openai.NotFoundError):
        stranger.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        stranger.files.retrieve(uploaded.id)
    assert [x.id for x in stranger.batches.list()] == []
    assert [x.id for x in stranger.files.list()] == []

    done = wait_batch(writer, batch.id)
    assert done.status == "completed" and done.output_file_id
    assert len(reader.files.content(done.output_file_id).text.splitlines()) == 3
    with pytest.raises(openai.NotFoundError):
        stranger.files.content(done.output_file_id)
    # the admin key sees every project's batches
    assert batch.id in {x.id for x in stack.client().batches.list()}
