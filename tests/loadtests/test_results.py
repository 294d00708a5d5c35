"""The figures of a run (the pure part of the Locust plugin's run), and that every reader of them uses
names the writer writes: the gates, ``prove``'s verdicts and table."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from asyncproof.loadtests import gates, results, stats
from asyncproof.loadtests.prove import SCENARIOS, observe, row
from asyncproof.loadtests.verdicts import HEALTHY, LOSES_POLLS, QUEUES, RESTARTS

T0 = 1_000.0
EXECUTOR = next(s for s in SCENARIOS if s.name == "executor-memory")


def scrape(at: float, **figures: Any) -> stats.Scrape:
    return stats.Scrape(time=at, **figures)


def run(
    counters: dict[str, float] | None = None,
    scrapes: list[stats.Scrape] | None = None,
    submit_ok: bool = True,
) -> results.Results:
    samples = {
        "POST /work/executor": [(T0 + 1 + i / 10, 5.0 + i, submit_ok or i % 2 == 0) for i in range(20)],
        "PROBE liveness": [(T0 + i, 2.0, True) for i in range(1, 6)] + [(T0 + 6, 1000.0, False)],
        "PROBE readiness": [(T0 + i, 3.0, True) for i in range(1, 7)],
        "TASK executor": [(T0 + 2, 400.0, True), (T0 + 3, 600.0, True), (T0 + 4, 900.0, False)],
    }
    return results.compute(
        samples,
        counters or {},
        scrapes if scrapes is not None else [scrape(T0), scrape(T0 + 9)],
        scrapes_failed=1,
        users=[(T0 + 0.5, 2), (T0 + 1.5, 6)],
        started=T0,
        ended=T0 + 10,
        host="http://127.0.0.1:8000",
    )


def test_endpoints_probes_and_tasks_from_the_raw_samples_and_counters() -> None:
    counters = {
        results.probe_counter(results.WOULD_RESTART): 1,
        results.task_counter("executor", results.SUBMITTED): 4,
        results.task_counter("executor", results.POLLS_404): 2,
    }
    figures = run(counters)
    submit = figures["endpoints"]["POST /work/executor"]
    assert (submit["count"], submit["failures"], submit["p50"], submit["max"]) == (20, 0, 14.0, 24.0)
    assert submit["rps"] == 2.0
    assert figures["probe"] == {
        "would_restart": 1,
        "would_unready": 0,
        "failures": 1,
        "liveness.p99": 1000.0,
        "readiness.p99": 3.0,
    }
    task = figures["tasks"]["executor"]
    assert (task["completed"], task["failed"], task["submitted"], task["polls_404"]) == (2, 1, 4, 2)
    assert (task["completion.p50"], task["completion.max"]) == (0.6, 0.9)
    assert figures["duration_seconds"] == 10
    assert figures["series"]["users"][:3] == [2, 6, None]
    assert figures["series"]["requests per second"][1] == 10


def test_a_task_counted_but_never_finished_still_has_its_figures() -> None:
    figures = results.compute(
        {},
        {results.task_counter("queue", results.UNFINISHED): 3},
        None,
        started=T0,
        ended=T0 + 1,
    )
    assert figures["tasks"]["queue"]["unfinished"] == 3
    assert figures["tasks"]["queue"]["completed"] == 0
    assert figures["server"] == {}  # not scraped: nothing to say, not zeros


def test_server_figures_from_the_scrapes() -> None:
    first = scrape(T0, lag_buckets={0.01: 5, float("inf"): 5}, stalls={"/r": 1}, blocked_seconds={"/r": 0.2})
    last = scrape(
        T0 + 9,
        lag_buckets={0.01: 5, 0.5: 15, float("inf"): 15},
        lag_max=0.4,
        threadpool_waiting=3,
        stalls={"/r": 4, "none": 1},
        blocked_seconds={"/r": 1.0, "none": 0.15},
        routes={"/r", "/ok"},
        rss_by_pid={"1": 100.0, "2": 300.0},
    )
    server = run(scrapes=[first, last])["server"]
    assert server["scrapes"] == 2
    assert server["scrapes_failed"] == 1
    assert server["loop_lag.p99"] == pytest.approx(0.5 * 0.99 + 0.01 * 0.01, abs=0.01)
    assert (server["loop_lag.max"], server["threadpool.waiting.max"]) == (0.4, 3)
    assert server["routes"]["/r"] == {"stalls": 3, "blocked_seconds": 0.8}
    assert server["routes"]["/ok"] == {"stalls": 0, "blocked_seconds": 0.0}
    assert (server["stalls"], server["blocked_seconds"]) == (4, 0.95)
    assert (server["workers"], server["rss_bytes_per_worker"], server["rss_bytes_total"]) == (2, 200, 400)


def test_counter_names_are_checked_both_ways() -> None:
    name = results.task_counter("background-tasks", results.POLLS_404)
    assert results.task_counter_parts(name) == ("background-tasks", "polls_404")
    assert results.task_counter_parts(results.probe_counter(results.WOULD_UNREADY)) is None
    with pytest.raises(ValueError, match="not a task counter"):
        results.task_counter("executor", "polls404")
    with pytest.raises(ValueError, match="not a task counter"):
        results.task_counter_parts("task.executor.polls404")
    with pytest.raises(ValueError, match="not a probe counter"):
        results.probe_counter("restarts")


@pytest.mark.parametrize(
    ("offered", "shape"),
    [
        (gates.ENDPOINT_FIGURES, results.EndpointFigures),
        (gates.PROBE_FIGURES, results.ProbeFigures),
        (gates.SERVER_FIGURES, results.ServerFigures),
        (gates.TASK_FIGURES, results.TaskFigures),
    ],
)
def test_every_figure_a_gate_offers_is_one_the_run_writes(offered: dict[str, str], shape: type) -> None:
    assert set(offered) <= set(shape.__annotations__)


def test_gates_read_what_compute_writes() -> None:
    figures = run({results.task_counter("executor", results.POLLS_404): 2})
    conditions = [
        gates.parse_condition("probe", "failures == 1"),
        gates.parse_condition("probe", "liveness.p99 >= 1s"),
        gates.parse_condition("task executor", "polls_404 == 2"),
        gates.parse_condition("server", "scrapes_failed == 1"),
        gates.parse_condition("POST /work/executor", "count == 20"),
    ]
    assert [outcome.passed for outcome in gates.evaluate(conditions, figures)] == [True] * 5


def test_prove_reads_what_compute_writes() -> None:
    healthy = dict(run())
    assert observe(healthy, dataclasses.replace(EXECUTOR, style="executor"), 0) != HEALTHY  # 1 failed task
    counters = {results.task_counter("executor", results.POLLS_404): 2}
    assert observe(dict(run(counters)), EXECUTOR, 0) == LOSES_POLLS
    counters = {results.probe_counter(results.WOULD_RESTART): 1}
    assert observe(dict(run(counters)), EXECUTOR, 0) == RESTARTS
    queued = dict(run(scrapes=[scrape(T0), scrape(T0 + 9, threadpool_waiting=5)]))
    assert observe(queued, dataclasses.replace(EXECUTOR, style=""), 0) == QUEUES
    figures = row(EXECUTOR, dict(run(counters)), 0)
    assert figures["would_restart"] == 1
    assert figures["probe_failures"] == 1
    assert figures["probe_p99_ms"] == 1000.0
    assert figures["submit_p50_ms"] == 14.0
    assert figures["task_p95_s"] == 0.9
