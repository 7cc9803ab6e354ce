"""The Procrastinate side of bench/queue.py: one no-op task on the benchmark database."""

from __future__ import annotations

import os
from typing import Any

import procrastinate

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("BENCH_DATABASE_URL", ""))
)


@app.task(name="noop")
async def noop(**payload: Any) -> None:
    """Does nothing: the benchmark measures the queue, not the work."""
