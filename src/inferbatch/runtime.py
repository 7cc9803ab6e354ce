"""Process start-up shared by the roles: logging, database URL, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from inferbatch.config import Settings


def setup_logging(settings: Settings, role: str) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def install_stop_signals(stop: asyncio.Event, abort: asyncio.Event | None = None) -> None:
    """First SIGTERM/SIGINT sets ``stop``; a second sets ``abort`` (if given)."""
    loop = asyncio.get_running_loop()

    def handler() -> None:
        if stop.is_set() and abort is not None:
            abort.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler)
