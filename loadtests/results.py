"""The figures of a run: their names, their shapes, and how they are computed from what was recorded.

``contract.py`` is to metrics what this module is to a run's results: the Locust plugin writes them,
the gates, ``prove``'s verdicts and table and ``asyncproof audit`` read them, all by the names here,
so a rename is one edit (and mypy checks the rest) instead of a verdict turning "healthy" by silence.

:func:`compute` is the pure part of the plugin's run (no Locust, no gevent): raw samples, the users'
counters and the server's scrapes in, :class:`Results` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from asyncproof.loadtests import stats

# Request types of the samples that are not requests to the app's routes.
PROBE_TYPE = "PROBE"  # "PROBE liveness": one kubelet-like probe
TASK_TYPE = "TASK"  # "TASK executor": a task from submit to its terminal state

# -- an endpoint's figures (stats.Summary.as_dict): times in milliseconds ---------------------------
COUNT = "count"
FAILURES = "failures"
FAIL_RATIO = "fail_ratio"
P50, P90, P95, P99, MAX, AVG = "p50", "p90", "p95", "p99", "max", "avg"
RPS = "rps"


class EndpointFigures(TypedDict):
    count: int
    failures: int
    fail_ratio: float
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    max: float | None
    avg: float | None
    rps: float


# -- the probes --------------------------------------------------------------------------------------
WOULD_RESTART = "would_restart"  # liveness failed threshold times in a row
WOULD_UNREADY = "would_unready"  # readiness failed threshold times in a row
LIVENESS, READINESS = "liveness", "readiness"


def probe_p99(probe: str) -> str:
    """The figure of a probe's p99 latency (ms): ``liveness.p99``."""
    return f"{probe}.{P99}"


LIVENESS_P99, READINESS_P99 = probe_p99(LIVENESS), probe_p99(READINESS)

ProbeFigures = TypedDict(
    "ProbeFigures",
    {
        "would_restart": int,
        "would_unready": int,
        "failures": int,
        "liveness.p99": float | None,
        "readiness.p99": float | None,
    },
    total=False,
)

# -- the server, from its /metrics scrapes -----------------------------------------------------------
SCRAPES = "scrapes"
SCRAPES_FAILED = "scrapes_failed"
LOOP_LAG_P99 = "loop_lag.p99"  # s
LOOP_LAG_MAX = "loop_lag.max"  # s
THREADPOOL_WAITING_MAX = "threadpool.waiting.max"
THREADPOOL_BORROWED_MAX = "threadpool.borrowed.max"
STALLS = "stalls"
BLOCKED_SECONDS = "blocked_seconds"
ROUTES = "routes"  # per http_route: {"stalls": n, "blocked_seconds": s}
WORKERS = "workers"
RSS_BYTES_PER_WORKER = "rss_bytes_per_worker"
RSS_BYTES_TOTAL = "rss_bytes_total"

ServerFigures = TypedDict(
    "ServerFigures",
    {
        "scrapes": int,
        "scrapes_failed": int,
        "loop_lag.p99": float | None,
        "loop_lag.max": float,
        "threadpool.waiting.max": float,
        "threadpool.borrowed.max": float,
        "stalls": int,
        "blocked_seconds": float,
        "routes": dict[str, dict[str, float]],
        "workers": int,
        "rss_bytes_per_worker": int | None,
        "rss_bytes_total": int | None,
    },
    total=False,
)

# -- tasks (submit, then poll until done) ------------------------------------------------------------
COMPLETED = "completed"
FAILED = "failed"
COMPLETION_P50, COMPLETION_P95, COMPLETION_MAX = "completion.p50", "completion.p95", "completion.max"  # s
# counted by the users as they go (task_counter): the rest come from the TASK samples
SUBMITTED = "submitted"
UNFINISHED = "unfinished"  # not done by the deadline
POLLS_404 = "polls_404"  # a poll answered 404 for a task that exists
OPEN_AT_END = "open_at_end"  # still polled when the run ended
TASK_COUNTERS = (SUBMITTED, UNFINISHED, POLLS_404, OPEN_AT_END)

TaskFigures = TypedDict(
    "TaskFigures",
    {
        "completed": int,
        "failed": int,
        "completion.p50": float | None,
        "completion.p95": float | None,
        "completion.max": float | None,
        "submitted": int,
        "unfinished": int,
        "polls_404": int,
        "open_at_end": int,
    },
)


def probe_counter(figure: str) -> str:
    """The name a prober counts ``would_restart``/``would_unready`` under."""
    if figure not in (WOULD_RESTART, WOULD_UNREADY):
        raise ValueError(f"not a probe counter: {figure!r}")
    return f"probe.{figure}"


def task_counter(style: str, figure: str) -> str:
    """The name a task user counts ``figure`` of its ``style`` under: ``task.executor.polls_404``."""
    if figure not in TASK_COUNTERS:
        raise ValueError(f"not a task counter: {figure!r}; one of {', '.join(TASK_COUNTERS)}")
    return f"task.{style}.{figure}"


def task_counter_parts(name: str) -> tuple[str, str] | None:
    """``(style, figure)`` of a task counter's name, None for any other counter."""
    if not name.startswith("task."):
        return None
    style, _, figure = name[len("task.") :].rpartition(".")
    if not style or figure not in TASK_COUNTERS:
        raise ValueError(f"{name!r} is not a task counter (task.<style>.<{'|'.join(TASK_COUNTERS)}>)")
    return style, figure


class Results(TypedDict):
    started: float
    ended: float
    duration_seconds: float
    host: str | None
    endpoints: dict[str, EndpointFigures]  # "POST /work/sync"
    probes: dict[str, EndpointFigures]  # "liveness", "readiness"
    probe: ProbeFigures
    tasks: dict[str, TaskFigures]  # by style
    server: ServerFigures
    series: dict[str, Any]


def compute(
    samples: Mapping[str, Sequence[stats.Sample]],
    counters: Mapping[str, float],
    scrapes: Sequence[stats.Scrape] | None,
    *,
    scrapes_failed: int = 0,
    users: Sequence[tuple[float, int]] = (),
    started: float,
    ended: float,
    host: str | None = None,
) -> Results:
    """Every figure of a run. ``samples`` are keyed ``"<request type> <name>"``; ``scrapes`` is None
    when the server was not scraped (then the server's figures are empty)."""
    duration = max(ended - started, 1e-9)
    endpoints: dict[str, EndpointFigures] = {}
    probes: dict[str, EndpointFigures] = {}
    tasks: dict[str, TaskFigures] = {}
    for key, recorded in sorted(samples.items()):
        request_type, _, name = key.partition(" ")
        summary = stats.summarize(recorded, duration)
        if request_type == PROBE_TYPE:
            probes[name] = endpoint_figures(summary)
        elif request_type == TASK_TYPE:
            tasks[name] = task_figures(summary)
        else:
            endpoints[key] = endpoint_figures(summary)
    for name, amount in counters.items():
        parts = task_counter_parts(name)
        if parts is not None:
            style, figure = parts
            task = tasks.setdefault(style, task_figures(stats.Summary()))
            task[figure] = int(amount)  # type: ignore[literal-required]
    probe: ProbeFigures = {
        "would_restart": int(counters.get(probe_counter(WOULD_RESTART), 0)),
        "would_unready": int(counters.get(probe_counter(WOULD_UNREADY), 0)),
        "failures": sum(figures["failures"] for figures in probes.values()),
    }
    for name, figures in probes.items():
        probe[probe_p99(name)] = figures["p99"]  # type: ignore[literal-required]
    return {
        "started": started,
        "ended": ended,
        "duration_seconds": round(duration, 3),
        "host": host,
        "endpoints": endpoints,
        "probes": probes,
        "probe": probe,
        "tasks": tasks,
        "server": server_figures(scrapes, scrapes_failed) if scrapes is not None else {},
        "series": series(samples, users, scrapes, started, int(duration) + 1),
    }


def endpoint_figures(summary: stats.Summary) -> EndpointFigures:
    return {
        "count": summary.count,
        "failures": summary.failures,
        "fail_ratio": round(summary.fail_ratio, 6),
        "p50": summary.p50,
        "p90": summary.p90,
        "p95": summary.p95,
        "p99": summary.p99,
        "max": summary.max,
        "avg": summary.avg,
        "rps": round(summary.rps, 3),
    }


def task_figures(summary: stats.Summary) -> TaskFigures:
    def seconds(ms: float | None) -> float | None:
        return None if ms is None else round(ms / 1000, 3)

    return {
        "completed": summary.count - summary.failures,
        "failed": summary.failures,
        "completion.p50": seconds(summary.p50),
        "completion.p95": seconds(summary.p95),
        "completion.max": seconds(summary.max),
        "submitted": 0,
        "unfinished": 0,
        "polls_404": 0,
        "open_at_end": 0,
    }


def server_figures(scrapes: Sequence[stats.Scrape], failed: int) -> ServerFigures:
    """What the server's scrapes say about the run: lag, threadpool, stalls per route, memory."""
    figures: ServerFigures = {"scrapes": len(scrapes), "scrapes_failed": failed}
    if not scrapes:
        return figures
    first, last = scrapes[0], scrapes[-1]
    routes = stats.stalls_between(first, last)
    rss = last.rss_by_pid
    figures.update(
        {
            "loop_lag.p99": stats.lag_quantile_between(first, last, 0.99),
            "loop_lag.max": max(scrape.lag_max for scrape in scrapes),
            "threadpool.waiting.max": max(scrape.threadpool_waiting for scrape in scrapes),
            "threadpool.borrowed.max": max(scrape.threadpool_borrowed for scrape in scrapes),
            "stalls": int(sum(route["stalls"] for route in routes.values())),
            "blocked_seconds": round(sum(route["blocked_seconds"] for route in routes.values()), 3),
            "routes": routes,
            "workers": len(rss),
            "rss_bytes_per_worker": round(sum(rss.values()) / len(rss)) if rss else None,
            "rss_bytes_total": round(sum(rss.values())) if rss else None,
        }
    )
    return figures


def series(
    samples: Mapping[str, Sequence[stats.Sample]],
    users: Sequence[tuple[float, int]],
    scrapes: Sequence[stats.Scrape] | None,
    start: float,
    seconds: int,
) -> dict[str, Any]:
    """Per-second series for the report's charts."""
    found: dict[str, Any] = {"second": list(range(seconds))}
    requests_per_second = [0] * seconds
    for key, recorded in samples.items():
        slots = stats.per_second(recorded, start, seconds)
        request_type, _, name = key.partition(" ")
        if request_type == PROBE_TYPE:
            found[f"probe {name} max ms"] = [round(max(slot), 1) if slot else None for slot in slots]
        elif request_type != TASK_TYPE:
            found[f"{key} p50 ms"] = [
                round(stats.percentile(slot, 0.5) or 0, 1) if slot else None for slot in slots
            ]
            if not key.startswith("GET /tasks"):
                for index, slot in enumerate(slots):
                    requests_per_second[index] += len(slot)
    found["requests per second"] = requests_per_second
    running: list[int | None] = [None] * seconds
    for when, count in users:
        index = int(when - start)
        if 0 <= index < seconds:
            running[index] = count
    found["users"] = running
    if scrapes is not None:
        found["server"] = {
            "second": [round(scrape.time - start, 1) for scrape in scrapes],
            "loop lag max s": [scrape.lag_max for scrape in scrapes],
            "threadpool waiting": [scrape.threadpool_waiting for scrape in scrapes],
        }
    return found
