"""The alert rules, their promtool unit tests, the Alertmanager and Prometheus configs and
the Grafana dashboards are valid, and every PromQL expression in them parses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.monitoring.monitoring import (
    ALERTMANAGER_CONFIG,
    DASHBOARDS,
    PROMETHEUS_CONFIG,
    RECORDED_NAME,
    RULE_TESTS,
    RULES,
    alerts,
    all_expressions,
    catalogue_names,
    dashboard_json,
    dashboard_queries,
    panels,
    recordings,
    run_tool,
    series_names_of,
    tool,
    used_metric_names,
)

pytestmark = pytest.mark.unit


def test_promtool_check_rules_accepts_the_rule_file() -> None:
    out = run_tool(tool("promtool"), "check", "rules", RULES)
    assert "SUCCESS" in out


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert RULE_TESTS, "no promtool tests in deploy/prometheus/tests"
    out = run_tool(tool("promtool"), "test", "rules", *RULE_TESTS)
    assert "FAILED" not in out


def test_amtool_accepts_the_alertmanager_config() -> None:
    out = run_tool(tool("amtool"), "check-config", ALERTMANAGER_CONFIG)
    assert "SUCCESS" in out


def test_promtool_accepts_the_example_prometheus_config() -> None:
    out = run_tool(
        tool("promtool"), "check", "config", PROMETHEUS_CONFIG, cwd=PROMETHEUS_CONFIG.parent
    )
    assert "SUCCESS" in out


def test_every_promql_expression_parses(tmp_path: Path) -> None:
    # promtool has no "parse this expression" command: each expression becomes a recording
    # rule in its own group (named after where it comes from) and `check rules` parses them.
    groups = [
        {"name": f"{i:03d} {where}", "rules": [{"record": f"parse:check_{i}", "expr": expr}]}
        for i, (where, expr) in enumerate(all_expressions())
    ]
    for group in groups:
        expr = group["rules"][0]["expr"]
        assert "$" not in expr, f"{group['name']}: a Grafana variable is left in {expr}"
    path = tmp_path / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    out = run_tool(tool("promtool"), "check", "rules", path)
    assert f"SUCCESS: {len(groups)} rules found" in out


def test_every_alert_has_a_severity_and_runbook_annotations() -> None:
    for rule in alerts():
        name = rule["alert"]
        assert name.startswith("Inferbatch"), name
        assert rule.get("labels", {}).get("severity") in ("critical", "warning"), name
        notes = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert len(notes.get(key, "")) > 20, f"{name}: {key} missing or too short"
        for word in ("Meaning", "Check", "Do"):
            assert f"{word}:" in notes["runbook"], f"{name}: runbook lacks '{word}:'"


def _rule_tests() -> list[dict]:
    return [g for path in RULE_TESTS for g in yaml.safe_load(path.read_text())["tests"]]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in _rule_tests():
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in alerts()}
    assert names - firing == set(), "alerts without a firing test"
    assert names - quiet == set(), "alerts without a not-firing test"


def test_every_recording_rule_is_tested() -> None:
    tested = {case["expr"] for g in _rule_tests() for case in g.get("promql_expr_test", [])}
    assert {r["record"] for r in recordings()} - tested == set()


def test_recorded_series_used_anywhere_are_defined() -> None:
    defined = {r["record"] for r in recordings()}
    for where, expr in all_expressions():
        for name in RECORDED_NAME.findall(expr):
            assert name in defined, f"{where}: {name} is not a recording rule"


def test_every_metric_used_is_in_the_catalogue_with_its_labels() -> None:
    catalogue = catalogue_names()
    known = {s: name for name, (kind, _) in catalogue.items() for s in series_names_of(name, kind)}
    unknown = {m: sorted(w) for m, w in used_metric_names().items() if m not in known}
    assert unknown == {}, "metrics not in docs/metrics.md"
    # Label matchers must use labels the catalogue gives the metric.
    matcher = re.compile(r"(inferbatch_\w+)\{([^}]*)\}")
    for where, expr in all_expressions():
        for name, body in matcher.findall(expr):
            labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
            allowed = catalogue[known[name]][1] | {"le", "job", "instance"}
            assert labels <= allowed, f"{where}: {name} has no label {labels - allowed}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_uses_the_datasource_variable(path: Path) -> None:
    board = dashboard_json(path)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert board["uid"].startswith("inferbatch-")
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboards_are_the_four_expected_with_unique_uids() -> None:
    names = {p.stem for p in DASHBOARDS}
    assert names == {
        "inferbatch-overview",
        "inferbatch-deadlines-and-cost",
        "inferbatch-queue-and-workers",
        "inferbatch-engines",
    }
    uids = [dashboard_json(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


def test_cost_dashboard_prices_spot_and_dedicated_from_variables() -> None:
    board = dashboard_json(
        DASHBOARDS[[p.stem for p in DASHBOARDS].index("inferbatch-deadlines-and-cost")]
    )
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for name in ("spot_price", "dedicated_price"):
        assert variables[name]["type"] == "textbox"
        float(variables[name]["query"])
    exprs = " ".join(q.expr for q in dashboard_queries() if "cost" in q.dashboard)
    for needed in (
        "${spot_price}",
        "${dedicated_price}",
        "inferbatch_worker_busy_seconds_total",
        "inferbatch_dedup_tokens_saved_total",
        "inferbatch_dedup_hits_total",
    ):
        assert needed in exprs
