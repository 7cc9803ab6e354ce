"""Prompt-prefix keys computed at ingest."""

from __future__ import annotations

import pytest

from inferbatch.scheduler.prefix import MIN_HEAD_CHARS, PREFIX_CHARS, prefix_key
from inferbatch.scheduler.validation import ParsedLine, parse_line

pytestmark = pytest.mark.unit

SYSTEM = "You are a careful assistant. " * 40  # ~1,200 characters


def _chat(system: str, question: str, model: str = "m") -> dict[str, object]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
    }


def test_requests_that_share_a_system_prompt_share_a_key() -> None:
    a = prefix_key("m", _chat(SYSTEM, "What is 2 + 2?"))
    b = prefix_key("m", _chat(SYSTEM, "Name a prime."))
    assert a == b != 0
    assert prefix_key("m", _chat(SYSTEM + "!", "What is 2 + 2?")) != a
    assert prefix_key("other", _chat(SYSTEM, "What is 2 + 2?")) != a  # caches are per model


def test_heads_are_cut_so_long_shared_documents_still_match() -> None:
    document = "lorem ipsum " * 1000
    a = prefix_key("m", _chat(document + "first ending", "q1"))
    b = prefix_key("m", _chat(document + "another ending", "q2"))
    assert a == b != 0


def test_short_prompts_have_no_key() -> None:
    assert prefix_key("m", _chat("Be brief.", "Hi")) == 0
    assert prefix_key("m", {"model": "m", "prompt": "Once upon a time"}) == 0
    assert prefix_key("m", {"model": "m"}) == 0


def test_a_long_single_prompt_is_keyed_by_its_start() -> None:
    shared = "x" * PREFIX_CHARS
    assert prefix_key("m", {"prompt": shared + "a"}) == prefix_key("m", {"prompt": shared + "b"})
    assert prefix_key("m", {"prompt": shared + "a"}) != 0


def test_few_shot_turns_are_part_of_the_head() -> None:
    shots = [
        {"role": "user", "content": "q" * MIN_HEAD_CHARS},
        {"role": "assistant", "content": "a"},
    ]
    a = prefix_key("m", {"messages": [*shots, {"role": "user", "content": "one"}]})
    b = prefix_key("m", {"messages": [*shots, {"role": "user", "content": "two"}]})
    assert a == b != 0


def test_responses_and_anthropic_messages_are_keyed_by_instructions_and_system() -> None:
    responses = [{"instructions": SYSTEM, "input": q} for q in ("one", "two")]
    assert prefix_key("m", responses[0]) == prefix_key("m", responses[1]) != 0
    messages = [
        {"system": [{"type": "text", "text": SYSTEM}], "messages": [{"role": "user", "content": q}]}
        for q in ("one", "two")
    ]
    assert prefix_key("m", messages[0]) == prefix_key("m", messages[1]) != 0


def test_parse_line_carries_the_key() -> None:
    line = (
        b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": '
        b'{"model": "m", "messages": [{"role": "system", "content": "' + SYSTEM.encode() + b'"},'
        b' {"role": "user", "content": "hi"}]}}'
    )
    parsed = parse_line(line, 1, "/v1/chat/completions")
    assert isinstance(parsed, ParsedLine)
    assert parsed.prefix_key == prefix_key("m", _chat(SYSTEM, "hi")) != 0
