"""Anthropic Messages requests for engines that serve only chat completions (pure
translation both ways), checked against the official ``anthropic`` SDK's types."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import Message

from inferbatch.engines.messages import Untranslatable, from_chat, refusal, to_chat
from inferbatch.engines.usage import usage_of

pytestmark = pytest.mark.unit


def _answer(message: dict[str, Any], finish: str = "stop", **choice: Any) -> dict[str, Any]:
    usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    return {
        "object": "chat.completion",
        "model": "engine-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": usage,
    }


def test_system_text_and_sampling_become_a_chat_request() -> None:
    chat = to_chat(
        {
            "model": "m",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Again", "cache_control": {}}],
                },
            ],
            "stop_sequences": ["END"],
            "temperature": 0.3,
            "top_p": 0.9,
            "top_k": 40,
            "metadata": {"user_id": "u-1"},
            "service_tier": "auto",
            "stream": False,
        }
    )
    assert chat == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief.\n\nBe kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again"},
        ],
        "max_tokens": 64,
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END"],
        "user": "u-1",
    }


def test_images_tool_use_and_tool_results_are_translated() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    chat = to_chat(
        {
            "model": "m",
            "max_tokens": 10,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in "},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Let me look."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "weather",
                            "input": {"city": "Oslo"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 C"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "is_error": True,
                            "content": [{"type": "text", "text": "no such city"}],
                        },
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
            "tools": [
                {"name": "weather", "description": "Weather now.", "input_schema": schema},
                {"type": "custom", "name": "noop", "input_schema": {"type": "object"}},
            ],
            "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        }
    )
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "12 C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no such city"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "weather", "description": "Weather now.", "parameters": schema},
        },
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")],
)
def test_tool_choices(choice: dict[str, Any], expected: str) -> None:
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    assert to_chat({**body, "tool_choice": choice})["tool_choice"] == expected


def test_output_config_becomes_a_response_format_and_an_effort() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    chat = to_chat(
        {
            "model": "m",
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "x"}],
            "output_config": {"format": {"type": "json_schema", "schema": schema}, "effort": "max"},
            "thinking": {"type": "enabled", "budget_tokens": 2048},
        }
    )
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    assert chat["reasoning_effort"] == "high"
    assert "thinking" not in chat  # no budget in chat completions


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "document", "source": {"type": "text", "data": "x"}}],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "messages[0].content[0].source",
        ),
        ({"system": [{"type": "image"}]}, "system[0]"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"mcp_servers": [{"url": "https://x"}]}, "mcp_servers"),
        ({"container": "c1"}, "container"),
    ],
)
def test_what_chat_cannot_express_is_refused_naming_the_field(
    body: dict[str, Any], param: str
) -> None:
    base = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(Untranslatable) as exc:
        to_chat({**base, **body})
    assert exc.value.param == param
    refused = refusal(exc.value)
    assert refused["type"] == "error" and refused["error"]["type"] == "invalid_request_error"
    assert refused["error"]["message"].startswith(f"{param}: ")


def test_a_chat_answer_becomes_a_message() -> None:
    request = {"model": "asked", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    message = from_chat(_answer({"role": "assistant", "content": "Hello."}), request)
    parsed = Message.model_validate(message)
    assert parsed.id.startswith("msg_") and parsed.type == "message" and parsed.role == "assistant"
    assert parsed.model == "engine-model"
    assert [(b.type, getattr(b, "text", None)) for b in parsed.content] == [("text", "Hello.")]
    assert (parsed.stop_reason, parsed.stop_sequence) == ("end_turn", None)
    assert parsed.usage.input_tokens == 12 and parsed.usage.output_tokens == 5
    assert parsed.usage.cache_read_input_tokens == 0
    assert parsed.usage.cache_creation_input_tokens == 0


def test_stop_reasons() -> None:
    request: dict[str, Any] = {
        "model": "m",
        "max_tokens": 5,
        "stop_sequences": ["END"],
        "messages": [{"role": "user", "content": "Hi"}],
    }
    text = {"role": "assistant", "content": "a"}
    cut = Message.model_validate(from_chat(_answer(text, "length"), request))
    assert (cut.stop_reason, cut.stop_sequence) == ("max_tokens", None)
    # vLLM and SGLang name the stop string that matched
    stopped = Message.model_validate(from_chat(_answer(text, "stop", stop_reason="END"), request))
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "END")
    filtered = Message.model_validate(from_chat(_answer(text, "content_filter"), request))
    assert filtered.stop_reason == "refusal"


def test_tool_calls_and_reasoning_become_blocks() -> None:
    request: dict[str, Any] = {
        "model": "m",
        "max_tokens": 50,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "Weather?"}],
    }
    answer = _answer(
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "The user wants the weather.",
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"c": "Oslo"}'},
                },
                {
                    "id": "call_10",
                    "type": "function",
                    "function": {"name": "w", "arguments": "not json"},
                },
            ],
        },
        "tool_calls",
    )
    message = Message.model_validate(from_chat(answer, request))
    assert [b.type for b in message.content] == ["thinking", "tool_use", "tool_use"]
    thinking, first, second = message.content
    assert thinking.type == "thinking" and thinking.thinking == "The user wants the weather."
    assert first.type == "tool_use" and (first.id, first.name, first.input) == (
        "call_9",
        "w",
        {"c": "Oslo"},
    )
    assert second.type == "tool_use" and second.input == {"arguments": "not json"}
    assert message.stop_reason == "tool_use"
    # without thinking asked for, the engine's reasoning is left out
    plain = Message.model_validate(from_chat(answer, {**request, "thinking": {"type": "disabled"}}))
    assert [b.type for b in plain.content] == ["tool_use", "tool_use"]


def test_cached_tokens_read_as_anthropic_counts_them() -> None:
    answer = _answer({"role": "assistant", "content": "x"})
    answer["usage"]["prompt_tokens_details"] = {"cached_tokens": 8}
    request = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    message = from_chat(answer, request)
    assert message["usage"] == {
        "input_tokens": 4,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 8,
    }
    # and the worker reads the Message's usage back as the total input and the cached part
    usage = usage_of(message)
    assert (usage.prompt, usage.completion, usage.cached) == (12, 5, 8)


def test_anthropic_usage_counts_cache_writes_as_input() -> None:
    usage = usage_of(
        {
            "type": "message",
            "usage": {
                "input_tokens": 3,
                "output_tokens": 7,
                "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 20,
            },
        }
    )
    assert (usage.prompt, usage.completion, usage.cached) == (123, 7, 20)
    # an engine that reports no cache fields (vLLM): input_tokens is the whole input
    plain = usage_of({"usage": {"input_tokens": 9, "output_tokens": 2}})
    assert (plain.prompt, plain.completion, plain.cached) == (9, 2, None)
