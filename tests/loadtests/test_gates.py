"""SLO gates: the file format, its errors, and evaluation against a run's figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncproof.loadtests.gates import (
    GateError,
    evaluate,
    format_outcomes,
    load_gates,
    parse_condition,
    parse_gates,
)

RESULTS = {
    "endpoints": {
        "POST /work/sync": {"p99": 850.0, "p50": 120.0, "fail_ratio": 0.0, "count": 200, "rps": 20.0},
        "GET /tasks/{id}": {"p99": 12.0, "p50": 3.0, "fail_ratio": 0.02, "count": 400, "rps": 40.0},
    },
    "probe": {"would_restart": 2, "would_unready": 0, "failures": 7, "liveness.p99": 1000.0},
    "server": {
        "loop_lag.p99": 0.4,
        "threadpool.waiting.max": 0.0,
        "stalls": 3,
        "blocked_seconds": 0.9,
        "routes": {
            "/work/async": {"stalls": 3, "blocked_seconds": 0.9},
            "/work/thread": {"stalls": 0, "blocked_seconds": 0.0},
        },
    },
    "tasks": {"executor": {"completion.p95": 0.3, "polls_404": 12}},
}


def outcome_of(target: str, text: str) -> tuple[bool, float | None]:
    [outcome] = evaluate([parse_condition(target, text)], RESULTS)
    return outcome.passed, outcome.observed


@pytest.mark.parametrize(
    ("target", "text", "passed", "observed"),
    [
        ("POST /work/sync", "p99 < 1000ms", True, 850.0),
        ("POST /work/sync", "p99 < 1s", True, 850.0),  # units convert
        ("POST /work/sync", "p99 < 0.5s", False, 850.0),
        ("POST /work/sync", "p50 <= 120", True, 120.0),  # a bare number is in the figure's unit (ms)
        ("GET /tasks/{id}", "fail_ratio < 1%", False, 0.02),
        ("GET /tasks/{id}", "fail_ratio < 0.05", True, 0.02),
        ("*", "fail_ratio < 0.01", False, 0.02),  # every endpoint; the failing one is reported
        ("*", "rps >= 20", True, 20.0),  # the closest to failing
        ("probe", "would_restart == 0", False, 2.0),
        ("probe", "would_unready == 0", True, 0.0),
        ("server", "loop_lag.p99 < 100ms", False, 0.4),
        ("server", "threadpool.waiting.max == 0", True, 0.0),
        ("task executor", "completion.p95 < 500ms", True, 0.3),
        ("task executor", "polls_404 == 0", False, 12.0),
        ("server", "stalls == 0", False, 3.0),
        ("server", "blocked_seconds < 1s", True, 0.9),
        ("route /work/async", "stalls == 0", False, 3.0),
        ("route /work/async", "blocked_seconds < 500ms", False, 0.9),
        ("route /work/thread", "stalls == 0", True, 0.0),  # counted requests, never stalled
    ],
)
def test_conditions_are_checked_in_the_figures_unit(
    target: str, text: str, passed: bool, observed: float
) -> None:
    assert outcome_of(target, text) == (passed, observed)


@pytest.mark.parametrize(
    ("target", "text"),
    [
        ("POST /nowhere", "p99 < 1000ms"),  # an endpoint the run never called
        ("task queue", "completion.p95 < 5s"),  # a style that did not run
        ("server", "loop_lag.max < 1"),  # a figure the server did not report (no /metrics)
        ("route /work/asnyc", "stalls == 0"),  # a route the server never counted (misspelt)
    ],
)
def test_a_figure_nobody_measured_fails_its_gate(target: str, text: str) -> None:
    assert outcome_of(target, text) == (False, None)


@pytest.mark.parametrize(
    ("target", "text", "message"),
    [
        ("POST /x", "p99 under 1000ms", "write a condition as"),
        ("POST /x", "p42 < 1000ms", "unknown figure 'p42'"),
        ("probe", "p99 < 1s", "unknown figure 'p99'"),
        ("POST /x", "fail_ratio < 10ms", "does not fit"),
        ("server", "loop_lag.p99 < 5%", "does not fit"),
        ("route /work/async", "p99 < 1s", "unknown figure 'p99'"),
    ],
)
def test_bad_conditions_are_refused_with_what_to_write(target: str, text: str, message: str) -> None:
    with pytest.raises(GateError, match=message):
        parse_condition(target, text)


def test_a_file_needs_thresholds(tmp_path: Path) -> None:
    with pytest.raises(GateError, match="'thresholds' mapping"):
        parse_gates({"gates": {}})
    with pytest.raises(GateError, match="give a list of conditions"):
        parse_gates({"thresholds": {"probe": []}})
    broken = tmp_path / "gates.yaml"
    broken.write_text("thresholds: [unclosed")
    with pytest.raises(GateError, match="not valid YAML"):
        load_gates(broken)
    with pytest.raises(GateError, match="cannot read the gates file"):
        load_gates(tmp_path / "missing.yaml")


def test_yaml_and_json_files_read_the_same(tmp_path: Path) -> None:
    (tmp_path / "gates.yaml").write_text(
        'thresholds:\n  "POST /work/sync": ["p99 < 1000ms", "fail_ratio < 0.01"]\n  probe: would_restart == 0\n'
    )
    (tmp_path / "gates.json").write_text(
        '{"thresholds": {"POST /work/sync": ["p99 < 1000ms", "fail_ratio < 0.01"], "probe": ["would_restart == 0"]}}'
    )
    from_yaml = load_gates(tmp_path / "gates.yaml")
    assert from_yaml == load_gates(tmp_path / "gates.json")
    assert [(c.target, c.figure, c.op, c.threshold) for c in from_yaml] == [
        ("POST /work/sync", "p99", "<", 1000.0),
        ("POST /work/sync", "fail_ratio", "<", 0.01),
        ("probe", "would_restart", "==", 0.0),
    ]
    summary = format_outcomes(evaluate(from_yaml, RESULTS))
    assert "FAIL  probe" in summary
    assert "2 passed, 1 failed" in summary
