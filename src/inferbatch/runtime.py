"""Process start-up shared by the roles: logging, database URL, signals."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from datetime import UTC, datetime

from inferbatch.config import Settings

CONTEXT_FIELDS = ("batch_id", "request_id", "worker_id", "engine", "duty")
"""Fields a log call may attach with ``extra=``; JSON lines carry them as keys."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, role, logger, message, context ids, error."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "role": self.role,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                event[name] = value
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def setup_logging(settings: Settings, role: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s")
        )
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
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
