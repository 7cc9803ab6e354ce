"""Public identifiers in OpenAI's style: a prefix and random characters."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """``prefix`` followed by ``length`` random letters and digits (e.g. ``file-``)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def request_public_id(request_id: int) -> str:
    """The ``batch_req_...`` id of a request row, stable for its life."""
    return f"batch_req_{request_id:016x}"


def parse_request_public_id(public_id: str) -> int | None:
    """Inverse of :func:`request_public_id`; None if the text is not such an id."""
    if not public_id.startswith("batch_req_"):
        return None
    try:
        return int(public_id[len("batch_req_") :], 16)
    except ValueError:
        return None
