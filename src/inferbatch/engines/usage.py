"""Token counts from an engine's answer, in either of OpenAI's usage shapes or Anthropic's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts from an answer's ``usage``, in either of OpenAI's shapes: chat and
    completions (``prompt_tokens``, ``completion_tokens``, ``*_tokens_details``) or
    responses (``input_tokens``, ``output_tokens``, ``*_tokens_details``); or in
    Anthropic's (a Message: ``input_tokens`` leaves out what ``cache_read_input_tokens``
    and ``cache_creation_input_tokens`` count, so ``prompt`` adds them, and ``cached`` is
    the tokens read from the cache)."""

    prompt: int | None = None
    completion: int | None = None
    cached: int | None = None
    reasoning: int | None = None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _detail(usage: dict[str, Any], keys: tuple[str, str], name: str) -> int | None:
    for key in keys:
        details = usage.get(key)
        if isinstance(details, dict) and (n := _count(details.get(name))) is not None:
            return n
    return None


def usage_of(body: object) -> Usage:
    """The token counts an engine reported (all None when it reported none)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return Usage()
    prompt = _count(usage.get("prompt_tokens"))
    if prompt is None:
        prompt = _count(usage.get("input_tokens"))
    completion = _count(usage.get("completion_tokens"))
    if completion is None:
        completion = _count(usage.get("output_tokens"))
    cache_read = _count(usage.get("cache_read_input_tokens"))
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    if prompt is not None and (cache_read or cache_write):
        prompt += (cache_read or 0) + (cache_write or 0)
    cached = _detail(usage, ("prompt_tokens_details", "input_tokens_details"), "cached_tokens")
    return Usage(
        prompt=prompt,
        completion=completion if completion is not None else 0,
        cached=cached if cached is not None else cache_read,
        reasoning=_detail(
            usage, ("completion_tokens_details", "output_tokens_details"), "reasoning_tokens"
        ),
    )
