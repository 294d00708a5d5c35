"""SLO gates: thresholds declared in a file, evaluated on the run's figures when it ends.

The file is YAML (or JSON), k6-like: each key names what is measured, each value lists conditions::

    thresholds:
      "POST /work/sync": ["p99 < 1000ms", "fail_ratio < 0.01"]
      "*": ["fail_ratio < 0.05"]          # every endpoint
      probe: ["would_restart == 0"]
      server: ["loop_lag.p99 < 0.1", "threadpool.waiting.max == 0"]
      "task executor": ["completion.p95 < 5s", "polls_404 == 0"]
      "route /work/async": ["stalls == 0", "blocked_seconds < 1s"]

A condition is ``<figure> <op> <number>[ms|s|%]``. Endpoint figures are in milliseconds (``p50``,
``p90``, ``p95``, ``p99``, ``max``, ``avg``), plus ``fail_ratio``, ``count`` and ``rps``; a bare
number is in the figure's unit, ``1s`` and ``1000ms`` are the same time. ``server`` and ``route
<template>`` (a route as ``http_route`` names it) have ``stalls`` and ``blocked_seconds``: what the
server's stall watchdog counted during the run; a route the server never counted a request or a stall
for is not measured, so a misspelt one fails instead of passing by silence. Pure Python: the Locust plugin
and ``asyncproof prove`` both use it.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asyncproof.loadtests import results as R  # the figures' names, as contract is for metrics

# Exit code of a run whose gates failed: distinct from Locust's 1 (requests failed) and 2 (usage).
GATE_FAILED_EXIT_CODE = 3

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_CONDITION = re.compile(
    r"^\s*([a-z][a-z0-9_.]*)\s*(<=|>=|==|!=|<|>)\s*(-?[0-9]+(?:\.[0-9]+)?)\s*(ms|s|%)?\s*$"
)

# Figures each kind of target offers, with the unit a bare number is in.
ENDPOINT_FIGURES = {
    **{name: "ms" for name in (R.P50, R.P90, R.P95, R.P99, R.MAX, R.AVG)},
    R.FAIL_RATIO: "ratio",
    R.COUNT: "count",
    R.RPS: "count",
}
PROBE_FIGURES = {
    R.WOULD_RESTART: "count",
    R.WOULD_UNREADY: "count",
    R.FAILURES: "count",
    R.LIVENESS_P99: "ms",
    R.READINESS_P99: "ms",
}
SERVER_FIGURES = {
    R.LOOP_LAG_P99: "s",
    R.LOOP_LAG_MAX: "s",
    R.THREADPOOL_WAITING_MAX: "count",
    R.THREADPOOL_BORROWED_MAX: "count",
    R.SCRAPES_FAILED: "count",
    R.STALLS: "count",  # event-loop stalls the server's watchdog counted during the run
    R.BLOCKED_SECONDS: "s",
}
# A route of the server (its http_route template): what its code did to the event loop.
ROUTE_FIGURES = {R.STALLS: "count", R.BLOCKED_SECONDS: "s"}
TASK_FIGURES = {
    R.COMPLETION_P50: "s",
    R.COMPLETION_P95: "s",
    R.COMPLETION_MAX: "s",
    R.SUBMITTED: "count",
    R.FAILED: "count",
    R.UNFINISHED: "count",
    R.POLLS_404: "count",
}


class GateError(ValueError):
    """The gates file is wrong; the message says where and how."""


@dataclass(frozen=True)
class Condition:
    target: str  # "POST /work/sync", "*", "probe", "server", "task executor"
    figure: str
    op: str
    threshold: float  # in the figure's unit
    text: str

    def holds(self, observed: float) -> bool:
        return _OPERATORS[self.op](observed, self.threshold)


@dataclass(frozen=True)
class Outcome:
    condition: Condition
    observed: float | None  # None: nothing was measured for it
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.condition.target,
            "condition": self.condition.text,
            "observed": self.observed,
            "passed": self.passed,
        }


def _figures_for(target: str) -> dict[str, str]:
    if target == "probe":
        return PROBE_FIGURES
    if target == "server":
        return SERVER_FIGURES
    if target.startswith("task "):
        return TASK_FIGURES
    if target.startswith("route "):
        return ROUTE_FIGURES
    return ENDPOINT_FIGURES


def _convert(value: float, unit: str | None, figure_unit: str, where: str) -> float:
    if unit is None:
        return value
    if unit == "%" and figure_unit == "ratio":
        return value / 100
    if unit in ("ms", "s") and figure_unit in ("ms", "s"):
        seconds = value / 1000 if unit == "ms" else value
        return seconds * 1000 if figure_unit == "ms" else seconds
    raise GateError(f"{where}: the unit {unit!r} does not fit this figure (measured in {figure_unit})")


def parse_condition(target: str, text: str) -> Condition:
    where = f"{target!r}: {text!r}"
    match = _CONDITION.match(text)
    if match is None:
        raise GateError(
            f"{where}: write a condition as '<figure> <op> <number>[ms|s|%]', e.g. 'p99 < 1000ms'"
        )
    figure, op, number, unit = match.groups()
    figures = _figures_for(target)
    if figure not in figures:
        raise GateError(f"{where}: unknown figure {figure!r}; {target!r} offers {', '.join(sorted(figures))}")
    return Condition(target, figure, op, _convert(float(number), unit, figures[figure], where), text.strip())


def parse_gates(document: Mapping[str, Any]) -> list[Condition]:
    thresholds = document.get("thresholds") if isinstance(document, Mapping) else None
    if not isinstance(thresholds, Mapping) or not thresholds:
        raise GateError("the gates file needs a 'thresholds' mapping: target -> list of conditions")
    conditions: list[Condition] = []
    for target, texts in thresholds.items():
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(target, str) or not isinstance(texts, list) or not texts:
            raise GateError(f"{target!r}: give a list of conditions, e.g. ['p99 < 1000ms']")
        conditions.extend(parse_condition(target, str(text)) for text in texts)
    return conditions


def load_gates(path: str | Path) -> list[Condition]:
    """Read and check a gates file; raises :class:`GateError` with a message a user can act on."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise GateError(f"cannot read the gates file {path}: {error.strerror}") from error
    try:
        document = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise GateError(
            f"{path} is not valid {'JSON' if str(path).endswith('.json') else 'YAML'}: {error}"
        ) from error
    try:
        return parse_gates(document)
    except GateError as error:
        raise GateError(f"{path}: {error}") from error


def _observed(condition: Condition, results: Mapping[str, Any]) -> list[float | None]:
    """The figure(s) a condition is checked against; ``*`` gives one per endpoint."""
    target, figure = condition.target, condition.figure
    if target == "probe":
        return [results.get("probe", {}).get(figure)]
    if target == "server":
        return [results.get("server", {}).get(figure)]
    if target.startswith("task "):
        return [results.get("tasks", {}).get(target[5:], {}).get(figure)]
    if target.startswith("route "):  # a route the server never counted is not measured
        return [results.get("server", {}).get(R.ROUTES, {}).get(target[6:], {}).get(figure)]
    endpoints = results.get("endpoints", {})
    if target == "*":
        return [summary.get(figure) for summary in endpoints.values()] or [None]
    return [endpoints.get(target, {}).get(figure)]


def evaluate(conditions: list[Condition], results: Mapping[str, Any]) -> list[Outcome]:
    """Check every condition. A figure nobody measured fails its gate: a gate must not pass by silence."""
    outcomes = []
    for condition in conditions:
        values = _observed(condition, results)
        if any(value is None for value in values):
            outcomes.append(Outcome(condition, None, False))
            continue
        numbers = [float(value) for value in values if value is not None]
        passed = all(condition.holds(value) for value in numbers)
        # report the worst value: the one that failed, or the one closest to failing
        worst = next((value for value in numbers if not condition.holds(value)), None)
        if worst is None:
            worst = max(numbers) if condition.op in ("<", "<=") else min(numbers)
        outcomes.append(Outcome(condition, worst, passed))
    return outcomes


def format_outcomes(outcomes: list[Outcome]) -> str:
    lines = ["SLO gates:"]
    for outcome in outcomes:
        observed = "not measured" if outcome.observed is None else f"{outcome.observed:g}"
        mark = "PASS" if outcome.passed else "FAIL"
        lines.append(
            f"  {mark}  {outcome.condition.target:<28} {outcome.condition.text:<32} observed {observed}"
        )
    failed = sum(1 for outcome in outcomes if not outcome.passed)
    lines.append(f"  {len(outcomes) - failed} passed, {failed} failed")
    return "\n".join(lines)
