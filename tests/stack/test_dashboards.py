"""The grafanalib dashboards: committed JSON in step with the source, and every panel query valid PromQL
over the contract's metrics and labels, counters only in rate()/increase(), quantiles summed by le."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from asyncproof.monitoring import contract
from dashboards import build
from tests.processes import ROOT
from tests.stack.promql import (
    COUNTER_FUNCTIONS,
    counter_series,
    enclosing_function,
    label_names,
    metric_names,
    promtool_parse,
    series_names,
)

DASHBOARDS = sorted((ROOT / "dashboards" / "json").glob("*.json"))
SPECS = contract.ALL_METRICS + contract.CLIENT_METRICS
# Labels Prometheus adds at scrape time, the histogram bucket label, and the per-worker pid.
EXTRA_LABELS = {"job", "instance", "le", "pid"}
# What a template variable stands for when a query is checked on its own.
VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$route": ".*", "$backend": ".*"}


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every panel target."""
    found = []
    for path in DASHBOARDS:
        document = load(path)
        for panel in document["panels"]:
            for target in panel.get("targets", []):
                found.append((path.stem, panel["title"], target["expr"]))
    return found


def substituted(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_the_committed_json_is_what_the_source_generates() -> None:
    assert [path.stem for path in DASHBOARDS] == ["data", "loadtest", "runtime", "service", "tasks"]
    assert build.main(["--check"]) == 0, "run: python -m dashboards.build"


def test_generation_is_deterministic() -> None:
    for source in build.sources():
        assert build.render(source) == build.render(source)


def test_every_query_parses_as_promql() -> None:
    expressions = [substituted(expr) for _, _, expr in queries()]
    assert len(expressions) >= 25
    result = promtool_parse(expressions)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("dashboard", "title", "expr"), queries(), ids=lambda value: str(value)[:40])
def test_queries_read_the_contract_the_right_way(dashboard: str, title: str, expr: str) -> None:
    assert metric_names(expr) <= series_names(SPECS), (
        f"not in the contract: {metric_names(expr) - series_names(SPECS)}"
    )
    contract_labels = {label for spec in SPECS for label in spec.labels} | EXTRA_LABELS
    assert label_names(expr) <= contract_labels, (
        f"labels outside the contract: {label_names(expr) - contract_labels}"
    )
    for counter in counter_series(SPECS):
        for match in re.finditer(rf"\b{counter}\b", expr):
            assert enclosing_function(expr, match.start()) in COUNTER_FUNCTIONS, f"{counter} outside rate()"
    assert all(window == "$__rate_interval" for window in re.findall(r"\[([^\]]+)\]", expr))
    for quantile in re.finditer(r"histogram_quantile\(", expr):
        assert re.match(r"histogram_quantile\([0-9.]+, sum by \(le\b", expr[quantile.start() :])


def test_panels_use_the_provisioned_datasource_and_the_template_variables() -> None:
    provisioned = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    variables: set[str] = set()
    for path in DASHBOARDS:
        document = load(path)
        assert document["uid"].startswith("asyncproof-")
        for panel in document["panels"]:
            assert panel["datasource"]["uid"] == uid
            assert all(target["datasource"]["uid"] == uid for target in panel["targets"])
        for template in document["templating"]["list"]:
            variables.add(template["name"])
            assert template["datasource"]["uid"] == uid
    assert variables == {"instance", "route", "backend"}
