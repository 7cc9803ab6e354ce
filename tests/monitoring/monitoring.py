"""The monitoring files (alert rules, dashboards, Alertmanager config) and the tools that
check them: promtool, amtool and prometheus from the Debian packages ``prometheus`` and
``prometheus-alertmanager``. A missing tool fails the test, it never skips it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "inferbatch.rules.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
CATALOGUE = ROOT / "docs" / "metrics.md"

# A metric name that is not part of a recording rule's name (those contain colons).
METRIC_NAME = re.compile(r"(?<![\w:])(inferbatch_[a-zA-Z0-9_]+)(?![\w:])")
RECORDED_NAME = re.compile(r"(?<![\w:])([a-zA-Z_]\w*:[\w:]*)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Grafana's built-in variables, replaced by durations of the same kind before parsing.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def tool(name: str) -> str:
    """The path of a Prometheus tool; fails the test when it is not installed."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(
            f"{name} is not installed: apt-get install prometheus prometheus-alertmanager",
            pytrace=False,
        )
    return path


def run_tool(*args: str | Path, cwd: Path = ROOT) -> str:
    """Runs a tool, fails the test with its output when it exits non-zero."""
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n{output}")
    return output


def load_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in load_rules() if "alert" in r]


def recordings() -> list[dict[str, Any]]:
    return [r for r in load_rules() if "record" in r]


@dataclass(frozen=True)
class DashboardQuery:
    dashboard: str
    where: str  # panel title or variable name
    expr: str  # as written, with Grafana variables

    def promql(self, variables: dict[str, str]) -> str:
        """The expression with Grafana's variables replaced by values of the same kind."""
        expr = self.expr
        for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
        return expr


def dashboard_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows
    return out


def dashboard_variables(board: dict[str, Any]) -> dict[str, str]:
    """Values to put in place of the dashboard's variables: a textbox's default, ``.*`` for
    a query variable (used in ``=~`` matchers), plus Grafana's built-in intervals."""
    values = dict(GRAFANA_BUILTINS)
    for var in board.get("templating", {}).get("list", []):
        if var["type"] == "textbox":
            values[var["name"]] = str(var["query"])
        elif var["type"] in ("query", "custom"):
            values[var["name"]] = ".*"
    return values


def label_values_metric(query: str) -> str | None:
    """The series selector of a ``label_values(selector, label)`` variable query."""
    match = re.fullmatch(r"\s*label_values\((.+),\s*\w+\)\s*", query)
    return match.group(1) if match else None


def dashboard_queries() -> list[DashboardQuery]:
    queries = []
    for path in DASHBOARDS:
        board = dashboard_json(path)
        for panel in panels(board):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append(DashboardQuery(path.name, panel["title"], target["expr"]))
        for var in board.get("templating", {}).get("list", []):
            if var["type"] != "query":
                continue
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            selector = label_values_metric(query)
            assert selector is not None, f"{path.name}: variable {var['name']}: {query}"
            queries.append(DashboardQuery(path.name, f"variable {var['name']}", selector))
    return queries


def all_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and dashboard query, Grafana variables replaced."""
    out = [(f"rule {r.get('alert') or r.get('record')}", str(r["expr"])) for r in load_rules()]
    boards = {p.name: dashboard_variables(dashboard_json(p)) for p in DASHBOARDS}
    for q in dashboard_queries():
        out.append((f"{q.dashboard}: {q.where}", q.promql(boards[q.dashboard])))
    return out


def used_metric_names() -> dict[str, set[str]]:
    """Every ``inferbatch_*`` series name the rules and dashboards read, with where."""
    used: dict[str, set[str]] = {}
    for where, expr in all_expressions():
        for name in METRIC_NAME.findall(expr):
            used.setdefault(name, set()).add(where)
    return used


def exposition_names(text: str) -> set[str]:
    """Series names a Prometheus text exposition offers, including families declared with
    ``# TYPE`` that have no sample yet (labelled metrics before their first use)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names.add(family)
            if kind == "counter":
                base = family.removesuffix("_total")
                names.update({base + "_total", base + "_created"})
            elif kind == "histogram":
                names.update(family + s for s in (*HISTOGRAM_SUFFIXES, "_created"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def catalogue_names() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names) from the tables of docs/metrics.md."""
    out: dict[str, tuple[str, set[str]]] = {}
    row = re.compile(r"^\|\s*`(inferbatch_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|")
    for line in CATALOGUE.read_text().splitlines():
        if match := row.match(line):
            labels = {x.strip() for x in match.group(3).split(",") if x.strip()}
            out[match.group(1)] = (match.group(2), labels)
    return out


def catalogue_exporters() -> dict[str, set[str]]:
    """name -> the roles (api, scheduler, worker) docs/metrics.md says export it."""
    row = re.compile(r"^\|\s*`(inferbatch_\w+)`\s*\|[^|]*\|[^|]*\|([^|]*)\|")
    return {
        m.group(1): {role for role in ("api", "scheduler", "worker") if role in m.group(2)}
        for line in CATALOGUE.read_text().splitlines()
        if (m := row.match(line))
    }


def series_names_of(name: str, kind: str) -> set[str]:
    """The series a catalogue entry produces: a histogram's _bucket, _sum and _count."""
    if kind == "histogram":
        return {name + s for s in HISTOGRAM_SUFFIXES}
    return {name}
