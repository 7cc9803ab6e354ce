"""Every ``inferbatch_*`` series the alert rules and dashboards read is exported by a
running inferbatch: api, scheduler, a spot and a dedicated worker (each with a metrics
port) and engine-sim, after a batch with duplicate requests went through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from inferbatch.engines.local import free_port
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
    """Role -> /metrics text of each process, after a batch ran."""
    stack = Stack(db_url, tmp_path)
    try:
        ports = {role: free_port() for role in ("scheduler", "worker-spot", "worker-dedicated")}
        stack.spawn("api", ["api", "--port", str(stack.port)])
        stack.spawn("scheduler", ["scheduler", "--metrics-port", str(ports["scheduler"])])
        for pool in ("spot", "dedicated"):
            port = str(ports[f"worker-{pool}"])
            stack.spawn(f"worker-{pool}", ["worker", "--pool", pool, "--metrics-port", port])
        wait_http(stack.url + "/readyz", proc=stack.procs["api"])
        urls = {"api": stack.url + "/metrics"}
        for role, port in ports.items():
            urls[role] = f"http://127.0.0.1:{port}/metrics"
            wait_http(urls[role], proc=stack.procs[role])

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
        yield {role: httpx.get(url, timeout=10).text for role, url in urls.items()}
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
    roles = {
        "api": ["api"],
        "scheduler": ["scheduler"],
        "worker": ["worker-spot", "worker-dedicated"],
    }
    exported = {role: exposition_names(text) for role, text in scraped.items()}
    missing = []
    for name, (kind, _) in catalogue_names().items():
        for exporter in catalogue_exporters(name):
            for process in roles[exporter]:
                if not ({name} | series_names_of(name, kind)) & exported[process]:
                    missing.append(f"{name} ({process})")
    assert missing == []
