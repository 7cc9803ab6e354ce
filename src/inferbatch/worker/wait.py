"""Waiting on several events at once, the one primitive every worker loop sleeps in."""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_any(
    *events: asyncio.Event | asyncio.Future[Any],
    timeout: float | None,
) -> None:
    """Wait until any event is set / future is done, or the timeout passes."""
    waiters = [
        asyncio.ensure_future(e.wait()) if isinstance(e, asyncio.Event) else e for e in events
    ]
    if not waiters:
        await asyncio.sleep(timeout or 0)
        return
    _, pending = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for w, e in zip(waiters, events, strict=True):
        if w in pending and isinstance(e, asyncio.Event):
            w.cancel()
