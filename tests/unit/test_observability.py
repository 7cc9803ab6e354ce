"""Metric label bounds and JSON log lines."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from inferbatch.metrics import ModelLabels, priority_class
from inferbatch.policy.escalation import EscalationConfig, escalate_request, escalation_kind
from inferbatch.runtime import JsonFormatter

pytestmark = pytest.mark.unit


def test_model_label_is_bounded() -> None:
    labels = ModelLabels(limit=2)
    assert [labels(m) for m in ("a", "b", "c", "a", "d", "b")] == [
        "a",
        "b",
        "other",
        "a",
        "other",
        "b",
    ]


@pytest.mark.parametrize(
    ("priority", "label"),
    [(1, "normal"), (4, "normal"), (5, "medium"), (9, "medium"), (10, "high"), (1000, "high")],
)
def test_priority_classes(priority: int, label: str) -> None:
    assert priority_class(priority) == label


def test_escalation_reasons_map_to_bounded_kinds() -> None:
    config = EscalationConfig(max_spot_interruptions=2, max_failed_attempts=1)
    interrupted = escalate_request(2, 0, config)
    retried = escalate_request(0, 1, config)
    assert interrupted is not None and retried is not None
    assert escalation_kind(interrupted) == "interruptions"
    assert escalation_kind(retried) == "retry"
    assert escalation_kind("3 warm dedicated workers keep deadlines safe") == "deadline"


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("inferbatch.x", logging.WARNING, __file__, 1, msg, ("b",), None)
    record.__dict__.update(extra)
    return record


def test_json_log_line_carries_context() -> None:
    line = JsonFormatter("scheduler").format(_record("batch %s done", batch_id="batch_1"))
    event = json.loads(line)
    assert event["msg"] == "batch b done"
    assert (event["role"], event["level"], event["batch_id"]) == ("scheduler", "warning", "batch_1")
    assert "request_id" not in event
    assert "\n" not in line


def test_json_log_line_includes_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = _record("failed %s")
        record.exc_info = sys.exc_info()
    event = json.loads(JsonFormatter("worker").format(record))
    assert "RuntimeError: boom" in event["error"]
