"""``/v1/responses`` on an engine that serves only chat completions.

vLLM and SGLang serve OpenAI's Responses API themselves and get the body as it is. For an
engine that does not (llama.cpp's server, most local engines) a Responses body is
translated to a chat completion and the answer back to a Response object, so the output
line holds what OpenAI's own batch would write there.

The translation covers what a batch line can ask for: ``input`` as text or as a list of
messages (text and image parts, earlier function calls and their outputs),
``instructions``, sampling settings, ``max_output_tokens``, function tools and
``tool_choice``, and ``text.format`` (JSON schema or JSON object). A body that needs more
(built-in tools such as web search, stored conversations) raises :class:`Untranslatable`
naming the field; the request then fails with a 400, like an engine refusing it.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from inferbatch.engines.usage import usage_of

SAMPLING = ("temperature", "top_p", "seed", "user", "parallel_tool_calls")
"""Fields with the same name and meaning in both APIs."""
IGNORED = ("store", "metadata", "truncation", "include", "service_tier", "prompt_cache_key")
"""Fields that change nothing an engine computes here."""
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


class Untranslatable(ValueError):
    """The body asks for something chat completions cannot express."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise Untranslatable("A content part must be an object.", where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise Untranslatable("input_image needs an image_url (file_id is not served).", where)
        image: dict[str, Any] = {"url": url}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise Untranslatable(f"Content of type {kind!r} cannot be sent to this engine.", where)


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [_part(p, f"{where}[{i}]") for i, p in enumerate(content)]
        if all(p["type"] == "text" for p in parts):
            return "".join(p["text"] for p in parts)  # plain text suits every chat template
        return parts
    raise Untranslatable("Message content must be a string or a list of parts.", where)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list):
        raise Untranslatable("input must be a string or a list of items.", "input")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise Untranslatable("An input item must be an object.", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = ROLES.get(item.get("role", ""))
            if role is None:
                raise Untranslatable(f"Unknown role {item.get('role')!r}.", f"{where}.role")
            messages.append(
                {"role": role, "content": _content(item.get("content"), f"{where}.content")}
            )
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": output if isinstance(output, str) else str(output),
                }
            )
        elif kind == "reasoning":
            continue  # an earlier turn's reasoning: chat templates take none
        else:
            raise Untranslatable(f"Input items of type {kind!r} cannot be sent.", where)
    return messages


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Untranslatable("tools must be a list.", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise Untranslatable(
                f"Only function tools can be sent to this engine, not {kind!r}.", f"tools[{i}]"
            )
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if choice in ("none", "auto", "required"):
        return choice
    raise Untranslatable("tool_choice must be none, auto, required or a function.", "tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise Untranslatable(f"text.format {fmt['type']!r} is not known.", "text.format")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body that asks what the Responses ``body`` asks."""
    for field in ("previous_response_id", "conversation", "prompt", "background"):
        if body.get(field):
            raise Untranslatable(f"{field} cannot be used in a batch.", field)
    chat: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body)}
    for key in SAMPLING:
        if key in body:
            chat[key] = body[key]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    effort = (
        body.get("reasoning", {}).get("effort") if isinstance(body.get("reasoning"), dict) else None
    )
    if effort:
        chat["reasoning_effort"] = effort
    known = {"model", "input", "instructions", "max_output_tokens", "tools", "tool_choice"}
    known |= {"text", "reasoning", "stream", *SAMPLING, *IGNORED}
    unknown = sorted(set(body) - known)
    if unknown:
        raise Untranslatable(f"{unknown[0]} cannot be sent to this engine.", unknown[0])
    return chat


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _usage(answer: dict[str, Any]) -> dict[str, Any] | None:
    """A chat answer's usage in the Responses shape."""
    if not isinstance(answer.get("usage"), dict):
        return None
    u = usage_of(answer)
    prompt, completion = u.prompt or 0, u.completion or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": u.cached or 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": u.reasoning or 0},
        "total_tokens": prompt + completion,
    }


def from_chat(answer: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The Response object for a chat completion ``answer`` to the Responses ``request``."""
    choices = answer.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        output.append(
            {
                "type": "reasoning",
                "id": _id("rs"),
                "summary": [],
                "content": [{"type": "reasoning_text", "text": reasoning}],
                "status": "completed",
            }
        )
    text = message.get("content")
    if isinstance(text, str) and text:
        output.append(
            {
                "type": "message",
                "id": _id("msg"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            {
                "type": "function_call",
                "id": _id("fc"),
                "call_id": call.get("id") or _id("call"),
                "name": function.get("name"),
                "arguments": function.get("arguments") or "",
                "status": "completed",
            }
        )
    truncated = choice.get("finish_reason") == "length"
    fmt = request.get("text") if isinstance(request.get("text"), dict) else None
    return {
        "id": _id("resp"),
        "object": "response",
        "created_at": answer.get("created") or int(time.time()),
        "status": "incomplete" if truncated else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "error": None,
        "model": answer.get("model") or request.get("model"),
        "output": output,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "temperature": request.get("temperature"),
        "top_p": request.get("top_p"),
        "tools": request.get("tools") or [],
        "tool_choice": request.get("tool_choice") or "auto",
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "text": fmt or {"format": {"type": "text"}},
        "metadata": request.get("metadata") or {},
        "usage": _usage(answer),
    }
