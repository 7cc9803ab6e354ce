"""Deduplication end to end: identical requests cost one engine call, in scope only."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.test_sdk import wait_batch
from tests.helpers import parse_jsonl, tenant_key
from tests.stack import Stack

pytestmark = pytest.mark.e2e


def _file(n: int, distinct: int, prefix: str = "r") -> bytes:
    """``n`` requests whose bodies repeat every ``distinct`` lines."""
    lines = []
    for i in range(n):
        body = {
            "model": "m",
            "max_tokens": 3,
            "messages": [{"role": "user", "content": f"question {i % distinct}"}],
        }
        lines.append(
            json.dumps(
                {
                    "custom_id": f"{prefix}-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


def _run(client: openai.OpenAI, content: bytes, dedup: str | None = None):
    f = client.files.create(file=("in.jsonl", content), purpose="batch")
    b = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"dedup": dedup} if dedup else None,
    )
    done = wait_batch(client, b.id, timeout=120)
    assert done.status == "completed"
    return done, parse_jsonl(client.files.content(done.output_file_id or "").text)


def _engine_calls(s: Stack) -> int:
    return int(httpx.get(f"{s.sim_url}/sim/stats").json()["requests_total"])


def _key(s: Stack, name: str) -> str:
    """A key of user ``name`` in a project of its own."""
    return tenant_key(s.env, name)


@pytest.fixture
def stack(db_url: str, tmp_path: Path):
    s = Stack(db_url, tmp_path, sim_args=("--base-latency-s", "0.05")).start()
    try:
        yield s
    finally:
        s.close()


def test_duplicates_in_a_batch_cost_one_engine_call_each(stack: Stack) -> None:
    client = stack.client()
    done, out = _run(client, _file(1000, 800))
    assert _engine_calls(stack) == 800
    assert len(out) == 1000 and done.request_counts is not None
    assert done.request_counts.completed == 1000
    assert done.request_counts.model_dump()["deduplicated"] == 200
    by_id = {r["custom_id"]: r for r in out}
    for i in range(800, 1000):  # a copy of the original's output, under its own ids
        copy, original = by_id[f"r-{i}"], by_id[f"r-{i - 800}"]
        assert copy["response"]["body"] == original["response"]["body"]
        assert copy["id"] != original["id"]


def test_user_scope_isolates_users_and_reuses_within_a_user(stack: Stack) -> None:
    alice, bob = stack.client(_key(stack, "alice")), stack.client(_key(stack, "bob"))
    _run(alice, _file(50, 50, "a"))
    assert _engine_calls(stack) == 50
    _run(bob, _file(50, 50, "b"))
    assert _engine_calls(stack) == 100  # bob's identical requests ran: no cross-user reuse
    done, out = _run(alice, _file(50, 50, "c"))
    assert _engine_calls(stack) == 100  # alice's repeat reused her earlier outputs
    assert done.request_counts is not None
    assert done.request_counts.model_dump()["deduplicated"] == 50
    assert {r["custom_id"] for r in out} == {f"c-{i}" for i in range(50)}


def test_off_processes_everything_and_global_shares_across_users(stack: Stack) -> None:
    alice, bob = stack.client(_key(stack, "alice")), stack.client(_key(stack, "bob"))
    _run(alice, _file(40, 20, "a"), dedup="off")
    assert _engine_calls(stack) == 40  # even duplicates inside the batch ran
    _run(alice, _file(20, 20, "g"), dedup="global")
    assert _engine_calls(stack) == 60  # 'off' outputs are never reused
    _run(bob, _file(20, 20, "h"), dedup="global")
    assert _engine_calls(stack) == 60  # global batches share across users
