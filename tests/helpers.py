"""Builders for batch input files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
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


def _cli(env: Mapping[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "inferbatch", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def tenant_key(env: Mapping[str, str], name: str) -> str:
    """A key of user ``name`` in a project of the same name (made if new), through the CLI:
    another tenant, as a second team on the deployment would be."""
    listed = [line.split("\t") for line in _cli(env, "projects", "list").splitlines()]
    if not any(fields[-1] == name for fields in listed):
        _cli(env, "projects", "create", name)
    return _cli(env, "keys", "create", "--user", name, "--project", name).splitlines()[-1]
