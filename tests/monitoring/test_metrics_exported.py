"""Every ``inferbatch_*`` series the alert rules and dashboards read is exported by a
running inferbatch: api, scheduler, a spot and a dedicated worker (each with a metrics
port) and engine-sim, after a batch with duplicate requests went through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_line
from tests.monitoring.monitoring import (
    catalogue_exporters,
    catalogue_names,
    exposition_names,
    series_names_of,
    used_metric_names,
)
from tests.stack import Stack, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def scraped(db_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Process name -> /metrics text of each process, after a batch ran."""
    stack = Stack(db_url, tmp_path)
    try:
        stack.start(metrics=True)
        urls = stack.metrics_urls
        for name, url in urls.items():
            wait_http(url, proc=stack.procs[name])

        client = stack.client()
        # Two identical lines (coalesced), then the same batch again (reused from output).
        lines = [chat_line(f"r{i}", f"hello {i % 3}") for i in range(6)]
        for _ in range(2):
            upload = client.files.create(
                file=("in.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch"
            )
            batch = client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="1h"
            )
            assert wait_batch(client, batch.id).status == "completed"
        yield {name: httpx.get(url, timeout=10).text for name, url in urls.items()}
    finally:
        stack.close()


def test_every_metric_in_rules_and_dashboards_is_exported(scraped: dict[str, str]) -> None:
    exported: set[str] = set()
    for text in scraped.values():
        exported |= exposition_names(text)
    missing = {name: sorted(where) for name, where in used_metric_names().items()}
    missing = {name: where for name, where in missing.items() if name not in exported}
    assert missing == {}, f"used by rules or dashboards, exported by no process: {sorted(missing)}"


def test_every_catalogued_metric_is_exported_by_its_roles(scraped: dict[str, str]) -> None:
    """docs/metrics.md stays true: each entry is exported by every role it names."""
    exported = {process: exposition_names(text) for process, text in scraped.items()}
    # every role ran, so no entry passes for want of a process to check
    assert {p.split("-")[0] for p in exported} == {"api", "scheduler", "worker"}
    exporters = catalogue_exporters()
    missing = []
    for name, (kind, _) in catalogue_names().items():
        for role in exporters[name]:
            for process in (p for p in exported if p.split("-")[0] == role):
                if not ({name} | series_names_of(name, kind)) & exported[process]:
                    missing.append(f"{name} ({process})")
    assert missing == []
