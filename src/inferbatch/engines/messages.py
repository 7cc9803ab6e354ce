"""Anthropic's ``/v1/messages`` on an engine that serves only chat completions.

vLLM and SGLang serve the Messages API themselves and get the body as it is. For an
engine that does not (llama.cpp's server, most local engines) a Messages body is
translated to a chat completion and the answer back to a Message, so a batch's result
holds what Anthropic's own batch would write there.

The translation covers what a batch request can ask for: ``system`` (a string or text
blocks), ``messages`` with text, image (base64 and URL sources), ``tool_use`` and
``tool_result`` blocks, custom ``tools`` and ``tool_choice`` (auto, any, tool, none;
``disable_parallel_tool_use``), ``stop_sequences``, ``temperature``, ``top_p``, ``top_k``
(sent as is: vLLM, SGLang and llama.cpp read it, an engine that does not know it may
refuse the request), ``metadata.user_id``, and ``output_config`` (a JSON schema format,
an effort). ``thinking`` is not sent: chat completions have no thinking budget; the
engine reasons as its chat template does, and the reasoning it returns becomes
``thinking`` blocks when ``thinking`` is enabled or adaptive (left out otherwise, with an
empty signature: nothing here can sign it). Earlier thinking blocks are not sent back.
A body that needs more (server tools such as web search, documents, containers, MCP
servers) raises :class:`Untranslatable` naming the field; the request then fails with a
400, like an engine refusing it.
"""

from __future__ import annotations

from typing import Any

import orjson

from inferbatch.engines.responses import Untranslatable
from inferbatch.engines.usage import usage_of
from inferbatch.ids import new_id
from inferbatch.protocol.anthropic import (
    ContentBlock,
    ErrorObject,
    ErrorResponse,
    Message,
    StopReason,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
    Usage,
)

__all__ = ["Untranslatable", "from_chat", "refusal", "to_chat"]

SAMPLING = ("temperature", "top_p", "top_k")
"""Fields with the same name and meaning in both APIs (``top_k`` an engine extension)."""
IGNORED = ("service_tier", "inference_geo", "speed", "cache_control", "stream", "thinking")
"""Fields that change nothing an engine computes here (``thinking``: see the module)."""
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
"""``output_config.effort`` as chat's ``reasoning_effort``."""
FINISH: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""A chat ``finish_reason`` as a Message's ``stop_reason``."""


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise Untranslatable("An image block needs a source.", f"{where}.source")
    if source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise Untranslatable(
                "A base64 image source needs media_type and data.", f"{where}.source"
            )
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise Untranslatable(
        f"Image sources of type {source.get('type')!r} cannot be sent to this engine "
        "(base64 and url can).",
        f"{where}.source",
    )


def _text_or_parts(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)  # plain text suits every chat template
    return parts


def _tool_result(block: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A ``tool_result`` block as a ``tool`` message, then a ``user`` message with its
    images (a tool message carries text only)."""
    content = block.get("content", "")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image":
                images.append(_image(part, f"{where}.content[{i}]"))
            else:
                raise Untranslatable(
                    f"tool_result content of type {kind!r} cannot be sent to this engine.",
                    f"{where}.content[{i}]",
                )
    else:
        raise Untranslatable("tool_result content must be a string or a list.", where)
    text = "\n".join(texts)
    if block.get("is_error"):
        text = f"Error: {text}"  # chat has no error flag; the model still needs to know
    out: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
    ]
    if images:
        out.append({"role": "user", "content": images})
    return out


def _user(content: list[Any], where: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}[{i}]"
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            if parts:  # text before a tool result stays before it
                messages.append({"role": "user", "content": _text_or_parts(parts)})
                parts = []
            messages.extend(_tool_result(block, at))
        else:
            raise Untranslatable(f"Content of type {kind!r} cannot be sent to this engine.", at)
    if parts:
        messages.append({"role": "user", "content": _text_or_parts(parts)})
    return messages


def _assistant(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # an earlier turn's reasoning: chat templates take none
        else:
            raise Untranslatable(
                f"Content of type {kind!r} cannot be sent to this engine.", f"{where}[{i}]"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _system(system: Any) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise Untranslatable("system must be a string or a list of text blocks.", "system")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Untranslatable("system blocks must be text blocks.", f"system[{i}]")
        texts.append(str(block.get("text", "")))
    return "\n\n".join(texts)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _system(body["system"])})
    items = body.get("messages")
    if not isinstance(items, list):
        raise Untranslatable("messages must be a list.", "messages")
    for i, item in enumerate(items):
        where = f"messages[{i}]"
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            raise Untranslatable("A message needs the role user or assistant.", where)
        content = item.get("content")
        if isinstance(content, str):
            messages.append({"role": item["role"], "content": content})
            continue
        if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
            raise Untranslatable("content must be a string or a list of blocks.", where)
        if item["role"] == "user":
            messages.extend(_user(content, f"{where}.content"))
        else:
            messages.append(_assistant(content, f"{where}.content"))
    return messages


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Untranslatable("tools must be a list.", "tools")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or kind not in (None, "custom"):
            raise Untranslatable(
                f"Only custom tools can be sent to this engine, not {kind!r}.", f"tools[{i}]"
            )
        function: dict[str, Any] = {"name": tool.get("name")}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object"}
        if "strict" in tool:
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice, dict) and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise Untranslatable(
            "tool_choice must be {'type': 'auto' | 'any' | 'none'} or "
            "{'type': 'tool', 'name': ...}.",
            "tool_choice",
        )
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def _output_config(config: Any, chat: dict[str, Any]) -> None:
    if not isinstance(config, dict):
        raise Untranslatable("output_config must be an object.", "output_config")
    fmt = config.get("format")
    if isinstance(fmt, dict):
        if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise Untranslatable(
                "output_config.format must be a json_schema with a schema.",
                "output_config.format",
            )
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"]},
        }
    elif fmt is not None:
        raise Untranslatable("output_config.format must be an object.", "output_config.format")
    effort = config.get("effort")
    if effort is not None:
        if effort not in EFFORTS:
            raise Untranslatable(f"Unknown effort {effort!r}.", "output_config.effort")
        chat["reasoning_effort"] = EFFORTS[effort]


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body that asks what the Messages ``body`` asks."""
    known = {"model", "messages", "system", "max_tokens", "stop_sequences", "metadata"}
    known |= {"tools", "tool_choice", "output_config", *SAMPLING, *IGNORED}
    unknown = sorted(set(body) - known)
    if unknown:
        raise Untranslatable(f"{unknown[0]} cannot be sent to this engine.", unknown[0])
    chat: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body)}
    chat["max_tokens"] = body.get("max_tokens")
    for key in SAMPLING:
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("stop_sequences"):
        chat["stop"] = list(body["stop_sequences"])
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    if body.get("output_config") is not None:
        _output_config(body["output_config"], chat)
    return chat


def _input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as a ``tool_use`` block's input (always an object: text
    that is not a JSON object is kept under ``arguments``)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


def _stop(choice: dict[str, Any], request: dict[str, Any]) -> tuple[StopReason, str | None]:
    """The stop reason and the stop sequence that ended the answer (vLLM and SGLang name
    it in ``stop_reason``; an engine that does not gets ``end_turn``)."""
    message = choice.get("message") or {}
    if message.get("tool_calls"):
        return "tool_use", None
    matched = choice.get("stop_reason")
    sequences = request.get("stop_sequences") or []
    if choice.get("finish_reason") == "stop" and isinstance(matched, str) and matched in sequences:
        return "stop_sequence", matched
    return FINISH.get(str(choice.get("finish_reason")), "end_turn"), None


def from_chat(answer: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The Message for a chat completion ``answer`` to the Messages ``request``."""
    choices = answer.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[ContentBlock] = []
    thinking = request.get("thinking")
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    thinks = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    if thinks and isinstance(reasoning, str) and reasoning:
        content.append(ThinkingBlock(thinking=reasoning, signature=""))
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append(TextBlock(text=text))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            ToolUseBlock(
                id=call.get("id") or new_id("toolu_"),
                name=str(function.get("name") or ""),
                input=_input(function.get("arguments")),
            )
        )
    stop_reason, stop_sequence = _stop(choice, request)
    u = usage_of(answer)
    prompt, cached = u.prompt or 0, u.cached or 0
    usage = Usage(
        input_tokens=max(0, prompt - cached),
        output_tokens=u.completion or 0,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=cached,
    )
    model = answer.get("model") or request.get("model")
    return Message(
        id=new_id("msg_"),
        model=str(model),
        content=content,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        usage=usage,
    ).model_dump()


def refusal(exc: Untranslatable) -> dict[str, Any]:
    """The 400 body of a request that cannot be translated, in Anthropic's shape (what an
    engine serving the Messages API answers for a request it refuses)."""
    error = ErrorObject(type="invalid_request_error", message=f"{exc.param}: {exc}")
    return ErrorResponse(error=error).model_dump()
