"""Small PromQL text helpers for the rule and dashboard lint tests (promtool does the real parsing)."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import yaml

from asyncproof.monitoring import contract
from tests.services import require_executable

# PromQL words that are not metric names.
KEYWORDS = {
    "sum", "min", "max", "avg", "count", "rate", "increase", "irate", "deriv", "histogram_quantile",
    "time", "by", "without", "on", "ignoring", "and", "or", "unless", "group_left", "group_right",
    "offset", "bool", "abs", "clamp_min", "clamp_max", "changes", "resets", "label_replace",
}  # fmt: skip
COUNTER_FUNCTIONS = ("rate", "increase", "irate")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: label matchers, grouping clauses, strings and ranges removed."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return {word for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if word not in KEYWORDS}


def label_names(expr: str) -> set[str]:
    """Labels an expression matches on or groups by."""
    labels = set()
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(
            re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", re.sub(r'"[^"]*"', '""', matchers))
        )
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in grouping.split(",") if label.strip()}
    return labels


def enclosing_function(expr: str, position: int) -> str:
    """The name of the innermost function call around ``position`` ('' at the top level)."""
    depth = 0
    for index in range(position - 1, -1, -1):
        char = expr[index]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth == 0:
                match = re.search(r"([a-zA-Z_]+)\s*$", expr[:index])
                return match.group(1) if match else ""
            depth -= 1
    return ""


def series_names(specs: tuple[contract.MetricSpec, ...]) -> set[str]:
    names = set()
    for spec in specs:
        names.add(spec.exposed_name)
        if spec.kind == "histogram":
            names |= {f"{spec.exposed_name}_{suffix}" for suffix in ("bucket", "count", "sum")}
    return names


def counter_series(specs: tuple[contract.MetricSpec, ...]) -> set[str]:
    """Series that only ever grow: counters and the histogram parts."""
    names = set()
    for spec in specs:
        if spec.kind == "counter":
            names.add(spec.exposed_name)
        elif spec.kind == "histogram":
            names |= {f"{spec.exposed_name}_{suffix}" for suffix in ("bucket", "count", "sum")}
    return names


def promtool_parse(expressions: list[str]) -> subprocess.CompletedProcess[str]:
    """Parse every expression with promtool (as recording rules of a throw-away rule file)."""
    rules = {
        "groups": [
            {"name": "parse", "rules": [{"record": f"e{i}", "expr": e} for i, e in enumerate(expressions)]}
        ]
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "parse.yml"
        path.write_text(yaml.safe_dump(rules))
        return subprocess.run(
            [require_executable("promtool"), "check", "rules", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
