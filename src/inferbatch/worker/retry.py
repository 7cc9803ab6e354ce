"""Which engine answers are retried, and after how long (pure)."""

from __future__ import annotations

import random

RETRYABLE_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES


def backoff_seconds(
    failed_attempts: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with full jitter over [delay/2, delay]; a server's Retry-After
    is honoured when it asks for longer."""
    delay = min(cap, base * 2.0 ** max(0, failed_attempts - 1))
    draw: float = rng.random() if rng is not None else random.random()
    jittered = delay * (0.5 + 0.5 * draw)
    if retry_after is not None:
        return max(jittered, min(retry_after, cap))
    return jittered
