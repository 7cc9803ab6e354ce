"""A project's quota through the official ``openai`` SDK: a create past the limit raises
``openai.RateLimitError`` naming the quota, and the batch accepted before completes."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file
from tests.stack import ADMIN_KEY, Stack

pytestmark = pytest.mark.e2e


def test_a_create_past_the_quota_raises_rate_limit_error_naming_it(stack: Stack) -> None:
    client = stack.client()
    quotas = f"{stack.url}/v1/organization/projects/proj_default/quotas"
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    set_ = httpx.post(quotas, json={"batches_in_progress": 1}, headers=auth, timeout=10)
    assert set_.status_code == 200, set_.text
    uploaded = client.files.create(file=("in.jsonl", chat_file(5)), purpose="batch")
    first = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.RateLimitError) as refused:
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert refused.value.code == "quota_exceeded" and refused.value.param == "batches_in_progress"
    assert "quota batches_in_progress is 1; 1 batches are in use" in refused.value.message
    assert wait_batch(client, first.id).status == "completed"
    usage = httpx.get(quotas, headers=auth, timeout=10).json()["usage"]
    assert (usage["batches_in_progress"], usage["queued_requests"]) == (0, 0)
    # room again once the first batch has ended
    second = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert second.status == "validating"
