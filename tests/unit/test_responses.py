"""Responses requests for engines that serve only chat completions (pure translation)."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response

from inferbatch.engines.responses import Untranslatable, from_chat, to_chat

pytestmark = pytest.mark.unit


def test_text_input_and_instructions_become_messages() -> None:
    chat = to_chat(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": "Hi",
            "max_output_tokens": 9,
            "temperature": 0.2,
            "store": False,
        }
    )
    assert chat == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "temperature": 0.2,
        "max_tokens": 9,
    }


def test_items_tools_and_formats_are_translated() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    chat = to_chat(
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": "Rules."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is in "},
                        {"type": "input_image", "image_url": "https://x/y.png"},
                    ],
                },
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "42"},
            ],
            "tools": [{"type": "function", "name": "f", "parameters": schema}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "n", "schema": schema}},
        }
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Rules."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in "},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": schema},
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": [{"type": "file_search_call"}]}, "input[0]"),
        ({"input": [{"role": "narrator", "content": "x"}]}, "input[0].role"),
        ({"input": "x", "frobnicate": 1}, "frobnicate"),
    ],
)
def test_what_chat_cannot_express_is_refused_naming_the_field(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(Untranslatable) as exc:
        to_chat({"model": "m", **body})
    assert exc.value.param == param and str(exc.value)


def _chat_answer(**message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 4,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 6},
        },
    }


def test_a_chat_answer_becomes_a_response_the_sdk_reads() -> None:
    request = {"model": "m", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 9}
    body = from_chat(_chat_answer(content="Hello.", reasoning_content="Greet back."), request)
    response = Response.model_validate(body)
    assert response.output_text == "Hello."
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.status == "completed" and response.instructions == "Be brief."
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 4)
    assert response.usage.input_tokens_details.cached_tokens == 6
    assert response.id.startswith("resp_") and response.created_at == 1_700_000_000


def test_tool_calls_and_truncation_carry_over() -> None:
    answer = _chat_answer(
        content=None,
        tool_calls=[
            {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    )
    answer["choices"][0]["finish_reason"] = "length"
    response = Response.model_validate(from_chat(answer, {"model": "m", "input": "x"}))
    (call,) = response.output
    assert call.type == "function_call" and call.call_id == "call_9" and call.name == "f"
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
