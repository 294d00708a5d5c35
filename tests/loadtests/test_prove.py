"""The prove verdicts: which figures give which verdict, and the table that shows them."""

from __future__ import annotations

import logging
from pathlib import Path
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
    blocked_at,
    mismatches,
    observe,
    row,
)
from asyncproof.loadtests.report import table
from asyncproof.monitoring import stalls

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


def stall(route: str, place: str | None, call: str | None, seconds: float) -> stalls.Stall:
    return stalls.Stall(
        route=route,
        method="GET",
        place=place,
        call=call,
        frames=(),
        request_id=None,
        started=0.0,
        detected=0.0,
        seconds=seconds,
        samples=3,
    )


def test_blocked_at_names_where_most_stalls_were_from_the_watchdogs_own_lines(tmp_path: Path) -> None:
    # the server's log as a server without logging configured writes it: the messages alone
    log = tmp_path / "server.log"
    handler = logging.FileHandler(log)
    logger = logging.getLogger("asyncproof.stalls")
    logger.addHandler(handler)
    try:
        work = stall("/work/async", "asyncproof/app/work.py:88 in run (time.sleep)", None, 0.3)
        stalls._log(work, 0.3)
        stalls._log(stall("/items/{id}", "app/items.py:12 in get", "json.dumps", 0.2), 0.2)
        stalls._log(stall("none", None, None, 0.15), 0.15)
        stalls._log(stall("none", None, None, 0.15), 0.15)
        stalls._log(work, 1.5, ongoing=True)  # the same stall again once it ends: not counted twice
        window = stalls._Window(until=60.0, count=3, seconds=0.9, longest=0.3, last=work)
        stalls._log_summary(window, work, 60.0)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert blocked_at(log) == "asyncproof/app/work.py:88 in run (time.sleep)"  # 1 + 3 more
    log.write_text("started\nevent loop blocked 0.20 s outside any request outside application code\n")
    assert blocked_at(log) == "outside application code"
    log.write_text("started\nnothing blocked\n")
    assert blocked_at(log) is None
