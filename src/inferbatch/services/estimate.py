"""The token estimate a project's ``enqueued_tokens`` quota counts: for each request, its
input tokens estimated from its prompt plus the most it may write.

- Input: the characters of every string in the body's prompt fields (``messages``,
  ``prompt``, ``input``, ``instructions``, ``system``) divided by :data:`CHARS_PER_TOKEN`,
  rounded up: no tokenizer, the same rule for every model.
- Output: ``max_completion_tokens``, ``max_tokens`` (chat, completions, Anthropic's
  Messages) or ``max_output_tokens`` (Responses), the first present; without one,
  :data:`DEFAULT_MAX_TOKENS`. Embeddings write none.

A line that is not a JSON object counts 0 (ingest refuses it anyway). Pure and blocking:
callers run it in a thread.
"""

from __future__ import annotations

from typing import Any

import orjson

CHARS_PER_TOKEN = 4
DEFAULT_MAX_TOKENS = 1024
"""Output tokens counted for a request that sets no limit."""

PROMPT_FIELDS = ("messages", "prompt", "input", "instructions", "system")
LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    return 0


def request_tokens(body: Any, url: str = "") -> int:
    """The estimate of one request's ``body`` (sent to ``url``)."""
    if not isinstance(body, dict):
        return 0
    chars = sum(_chars(body.get(name)) for name in PROMPT_FIELDS)
    tokens = -(-chars // CHARS_PER_TOKEN)
    if url.endswith("/embeddings"):
        return tokens
    for name in LIMIT_FIELDS:
        limit = body.get(name)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
            return tokens + limit
    return tokens + DEFAULT_MAX_TOKENS


def line_tokens(line: bytes) -> int:
    """The estimate of one batch input line (``{"custom_id", "url", "body", ...}``)."""
    if not line.strip():
        return 0
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(item, dict):
        return 0
    url = item.get("url")
    return request_tokens(item.get("body"), url if isinstance(url, str) else "")


class LineEstimate:
    """The estimate of a JSON Lines file fed in chunks of any size (a line may span
    chunks): :meth:`feed` each, then :meth:`total`."""

    def __init__(self) -> None:
        self._partial = bytearray()
        self._tokens = 0

    def feed(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if self._partial:
                self._partial += chunk[start:end]
                self._tokens += line_tokens(bytes(self._partial))
                self._partial.clear()
            else:
                self._tokens += line_tokens(chunk[start:end])
            start = end + 1
        self._partial += chunk[start:]

    def total(self) -> int:
        """The estimate of every line fed, the last one without its newline too."""
        return self._tokens + line_tokens(bytes(self._partial))
