"""The prove verdicts: which figures give which verdict, and the table that shows them."""

from __future__ import annotations

from typing import Any

import pytest

from asyncproof.loadtests.prove import (
    ERRORS,
    HEALTHY,
    LOSES_POLLS,
    QUEUES,
    RESTARTS,
    SCENARIOS,
    WORKER_KILLED,
    Scenario,
    mismatches,
    observe,
    row,
)
from asyncproof.loadtests.report import table

EXECUTOR = next(s for s in SCENARIOS if s.name == "executor-sqlite")


def results(**parts: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "probe": {"would_restart": 0},
        "server": {"threadpool.waiting.max": 0.0, "loop_lag.p99": 0.002},
        "tasks": {"executor": {"polls_404": 0, "unfinished": 0, "failed": 0, "completion.p95": 0.4}},
        "endpoints": {"POST /work/executor": {"p50": 5.0, "p99": 40.0, "fail_ratio": 0.0, "rps": 6.0}},
        "probes": {"liveness": {"p99": 20.0, "failures": 0}, "readiness": {"p99": 25.0, "failures": 0}},
    }
    for key, value in parts.items():
        base[key] = {**base[key], **value}
    return base


@pytest.mark.parametrize(
    ("parts", "replaced", "verdict"),
    [
        ({}, 0, HEALTHY),
        ({"probe": {"would_restart": 1}}, 0, RESTARTS),
        ({"probe": {"would_restart": 2}}, 1, f"{RESTARTS}, {WORKER_KILLED}"),
        ({"tasks": {"executor": {"polls_404": 3, "unfinished": 0, "failed": 0}}}, 0, LOSES_POLLS),
        ({"server": {"threadpool.waiting.max": 12.0}}, 0, QUEUES),
        ({"tasks": {"executor": {"polls_404": 0, "unfinished": 1, "failed": 0}}}, 0, ERRORS),
        ({"endpoints": {"POST /work/executor": {"fail_ratio": 0.2}}}, 0, ERRORS),
        # restarts outrank everything else: a pod that is restarted loses its queue too
        ({"probe": {"would_restart": 1}, "server": {"threadpool.waiting.max": 5.0}}, 0, RESTARTS),
    ],
)
def test_figures_give_the_verdict(parts: dict[str, Any], replaced: int, verdict: str) -> None:
    assert observe(results(**parts), EXECUTOR, replaced) == verdict


def test_no_submit_at_all_is_an_error_not_healthy() -> None:
    empty = results()
    empty["endpoints"] = {}
    assert observe(empty, EXECUTOR, 0) == ERRORS


def test_every_scenario_expects_a_verdict_prove_can_observe() -> None:
    possible = {HEALTHY, QUEUES, RESTARTS, LOSES_POLLS, f"{RESTARTS}, {WORKER_KILLED}"}
    assert {s.expected for s in SCENARIOS} <= possible
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names))


def test_table_shows_figures_verdicts_and_mismatches() -> None:
    scenario = Scenario(
        "demo", "shows", ("ExecutorUser",), 1, HEALTHY, "POST /work/executor", style="executor"
    )
    figures = row(scenario, results(), 0)
    report = {
        "scenarios": [
            {**figures, "expected": HEALTHY, "observed": HEALTHY, "match": True},
            {**figures, "scenario": "bad", "expected": HEALTHY, "observed": QUEUES, "match": False},
            {
                "scenario": "queue",
                "expected": HEALTHY,
                "observed": "skipped",
                "match": False,
                "skipped": "no Redis",
            },
        ],
        "memory": None,
    }
    text = table(report)
    header, _, first, second, third = text.splitlines()
    assert "EXPECTED" in header
    assert "OBSERVED" in header
    assert first.split()[:3] == ["demo", "5", "40"]
    assert "MISMATCH" in second
    assert "MISMATCH" not in first
    assert "skipped: no Redis" in third
    assert "MISMATCH" not in third
    assert mismatches(report) == ["bad"]
