"""prometheus/: the config and rules pass promtool, the alert unit tests pass, and every metric the
rules read is one the contract defines (a renamed metric must not silently empty an alert)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from asyncproof.monitoring import contract
from tests.processes import ROOT
from tests.services import require_executable
from tests.stack.promql import metric_names, series_names

PROMETHEUS = ROOT / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_executable("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_config_and_rules_pass_promtool() -> None:
    config = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", *map(str, RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, sorted((PROMETHEUS / "tests").glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def rules() -> list[dict[str, str]]:
    return [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def known_series() -> set[str]:
    return series_names(contract.ALL_METRICS)


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule.get("record") or rule["alert"])
def test_rules_read_only_contract_metrics_and_recorded_series(rule: dict[str, str]) -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    unknown = metric_names(rule["expr"]) - known_series() - recorded
    assert not unknown, f"not in the metric contract: {sorted(unknown)}"


def test_every_alert_the_stack_promises_exists() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts >= {
        "ErrorBudgetBurnFast",
        "ErrorBudgetBurnSlow",
        "LatencySLOBurnFast",
        "LatencySLOBurnSlow",
        "EventLoopLagHigh",
        "EventLoopBlockedByRoute",
        "ThreadpoolSaturated",
        "TaskFailureRatioHigh",
        "TaskBacklogGrowing",
        "ReadinessFailing",
        "WorkerRestarts",
    }
    tested = Path(PROMETHEUS / "tests" / "asyncproof_test.yml").read_text()
    for alert in alerts:
        assert f"alertname: {alert}" in tested, f"{alert} has no promtool unit test"
