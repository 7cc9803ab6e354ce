"""Builders for batch input files."""

from __future__ import annotations

import json
from typing import Any


def chat_line(custom_id: str, text: str = "hello", model: str = "sim-model", **extra: Any) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body,
            **extra,
        }
    )


def chat_file(n: int, prefix: str = "req", model: str = "sim-model") -> bytes:
    return (
        "\n".join(chat_line(f"{prefix}-{i}", f"hello {i}", model) for i in range(n)) + "\n"
    ).encode()


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
