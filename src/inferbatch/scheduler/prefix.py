"""Prompt-prefix keys: which requests share a prompt head worth an engine's prefix cache.

A prefix cache (vLLM's automatic prefix caching, SGLang's radix cache, llama.cpp reusing
a slot's previous prompt) skips the prefill of a prompt head the engine computed for an
earlier request. Requests that share a head should therefore be claimed together and run
back to back on the same replica. The key is computed once, at ingest (pure: no I/O), and
stored on the queue row, where it orders the claim after priority and deadline (so no
deadline is ever traded for a cache hit).

The key is a 63-bit hash (0 means "no shared head") of the model and the *head* of the
rendered prompt, cut at ``PREFIX_CHARS`` characters (about 512 tokens at the usual 4
characters per token): long enough that a hit saves real prefill, short enough that
requests which diverge after a common system prompt still share it.

- Chat completions and Anthropic messages: the head is the system prompt and every
  message but the last (few-shot turns, a shared document), rendered role by role.
- Responses: ``instructions`` and every input item but the last, likewise.
- When that head is shorter than ``MIN_HEAD_CHARS`` (or for a completion's single prompt
  string), the first ``PREFIX_CHARS`` of the whole rendered prompt are the head, provided
  the prompt is longer than that (a long shared document at the start of one message).
- Shorter prompts get key 0 and keep their line order: caching them saves little.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

PREFIX_CHARS = 2048
"""The longest head hashed, in characters (~512 tokens)."""
MIN_HEAD_CHARS = 512
"""A head of the leading messages shorter than this (~128 tokens) is not worth a key."""


def _text(content: Any) -> str:
    """The text of a message's content: a string, or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                parts.append(orjson.dumps(part, option=orjson.OPT_SORT_KEYS).decode())
        return "\n".join(parts)
    if content is None:
        return ""
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()


def _render(items: list[Any]) -> str:
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append(f"<{item.get('role', item.get('type', ''))}>{_text(item.get('content'))}")
        else:
            out.append(_text(item))
    return "\n".join(out)


def _head_and_prompt(body: dict[str, Any]) -> tuple[str, str]:
    """(the leading messages rendered, the whole prompt rendered)."""
    system = body.get("system", body.get("instructions"))
    lead = f"<system>{_text(system)}\n" if system is not None else ""
    for field in ("messages", "input"):
        items = body.get(field)
        if isinstance(items, list) and items:
            head = lead + _render(items[:-1])
            return head, head + "\n" + _render(items[-1:])
        if isinstance(items, str):
            return lead, lead + items
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = "".join(p for p in prompt if isinstance(p, str))
    return lead, lead + (prompt if isinstance(prompt, str) else "")


def prefix_key(model: str, body: dict[str, Any]) -> int:
    """The prefix key of a request ``body`` for ``model`` (0: none worth grouping)."""
    head, prompt = _head_and_prompt(body)
    if len(head) < MIN_HEAD_CHARS:
        if len(prompt) <= PREFIX_CHARS:
            return 0
        head = prompt
    digest = hashlib.blake2b(digest_size=8)
    digest.update(model.encode())
    digest.update(b"\0")
    digest.update(head[:PREFIX_CHARS].encode())
    return int.from_bytes(digest.digest(), "big") >> 1 or 1  # a positive bigint, never 0
