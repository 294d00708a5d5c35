"""Figures from raw samples and from Prometheus scrapes. Pure Python: no Locust import (gevent).

Locust keeps response times rounded (to 10 ms under a second, 100 ms under ten); the gates and the
verdicts use the raw timings collected here instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from asyncproof.monitoring import contract

# A sample of one request as the load generator saw it: (wall-clock end time, milliseconds, ok).
Sample = tuple[float, float, bool]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of ``values`` (``fraction`` in [0, 1]); None when empty.

    Nearest-rank returns a value that was observed, never one interpolated between two: a gate on
    p99 compares against a real request.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Summary:
    """Exact figures of one endpoint (or probe, or task kind) over a run."""

    count: int = 0
    failures: int = 0
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    avg: float | None = None
    rps: float = 0.0

    @property
    def fail_ratio(self) -> float:
        return self.failures / self.count if self.count else 0.0


def summarize(samples: Sequence[Sample], duration_seconds: float) -> Summary:
    """Percentiles (ms) over every sample, successful or not: a timed-out request is slow too."""
    times = [ms for _, ms, _ in samples]
    if not times:
        return Summary()

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return Summary(
        count=len(times),
        failures=sum(1 for _, _, ok in samples if not ok),
        p50=rounded(percentile(times, 0.50)),
        p90=rounded(percentile(times, 0.90)),
        p95=rounded(percentile(times, 0.95)),
        p99=rounded(percentile(times, 0.99)),
        max=rounded(max(times)),
        avg=rounded(sum(times) / len(times)),
        rps=len(times) / duration_seconds if duration_seconds > 0 else 0.0,
    )


def per_second(samples: Iterable[Sample], start: float, seconds: int) -> list[list[float]]:
    """The sample durations (ms) grouped by the second of the run they ended in."""
    slots: list[list[float]] = [[] for _ in range(max(seconds, 0))]
    for ended, ms, _ in samples:
        index = int(ended - start)
        if 0 <= index < len(slots):
            slots[index].append(ms)
    return slots


def histogram_quantile(fraction: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative ``(upper bound, count)`` pairs.

    Linear interpolation inside the bucket the rank falls in; a rank in the ``+Inf`` bucket gives the
    largest finite bound, as Prometheus does. None when the histogram is empty.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = fraction * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass
class Scrape:
    """What one scrape of a ``monitoring`` app says about the server side."""

    time: float
    # cumulative loop-lag histogram summed over workers: upper bound -> count
    lag_buckets: dict[float, float] = field(default_factory=dict)
    lag_max: float = 0.0  # largest lag any worker saw over its last interval
    threadpool_waiting: float = 0.0  # summed over workers
    threadpool_borrowed: float = 0.0
    rss_by_pid: dict[str, float] = field(default_factory=dict)
    # event-loop stalls and the seconds they held the loop, summed over workers: route -> total
    stalls: dict[str, float] = field(default_factory=dict)
    blocked_seconds: dict[str, float] = field(default_factory=dict)
    routes: set[str] = field(default_factory=set)  # routes the request histogram has counted


def parse_scrape(text: str, when: float) -> Scrape:
    """Pick the server-side figures the verdicts use out of a ``/metrics`` text exposition."""
    scrape = Scrape(time=when)
    lag = contract.ASYNCIO_EVENT_LOOP_LAG.exposed_name
    names = {
        contract.ASYNCIO_EVENT_LOOP_LAG_MAX.exposed_name: "lag_max",
        contract.ANYIO_THREADPOOL_WAITING.exposed_name: "threadpool_waiting",
        contract.ANYIO_THREADPOOL_BORROWED.exposed_name: "threadpool_borrowed",
    }
    rss = contract.PROCESS_RESIDENT_MEMORY.exposed_name
    by_route = {
        contract.ASYNCIO_EVENT_LOOP_STALLS.exposed_name: scrape.stalls,
        contract.ASYNCIO_EVENT_LOOP_BLOCKED.exposed_name: scrape.blocked_seconds,
    }
    requests = contract.HTTP_SERVER_REQUEST_DURATION.name + "_count"
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in by_route:
                totals = by_route[sample.name]
                route = sample.labels.get("http_route", "")
                totals[route] = totals.get(route, 0.0) + sample.value
            elif sample.name == requests:
                scrape.routes.add(sample.labels.get("http_route", ""))
            elif sample.name == lag + "_bucket":
                bound = float(sample.labels["le"])
                scrape.lag_buckets[bound] = scrape.lag_buckets.get(bound, 0.0) + sample.value
            elif sample.name in names:
                attribute = names[sample.name]
                current = getattr(scrape, attribute)
                value = max(current, sample.value) if attribute == "lag_max" else current + sample.value
                setattr(scrape, attribute, value)
            elif sample.name == rss:
                scrape.rss_by_pid[sample.labels.get("pid", "")] = sample.value
    return scrape


def lag_quantile_between(first: Scrape, last: Scrape, fraction: float) -> float | None:
    """The loop-lag quantile of what happened between two scrapes (counts are cumulative).

    A worker that restarted in between has fewer counts than before; its bucket deltas are clipped
    at zero rather than going negative.
    """
    bounds = sorted(set(first.lag_buckets) | set(last.lag_buckets))
    deltas = [
        (bound, max(0.0, last.lag_buckets.get(bound, 0.0) - first.lag_buckets.get(bound, 0.0)))
        for bound in bounds
    ]
    # keep the deltas cumulative after clipping
    running = 0.0
    cumulative = []
    for bound, delta in deltas:
        running = max(running, delta)
        cumulative.append((bound, running))
    return histogram_quantile(fraction, cumulative)


def stalls_between(first: Scrape, last: Scrape) -> dict[str, dict[str, float]]:
    """Event-loop stalls and blocked seconds per route between two scrapes: every route the server
    counted requests for (0 when none of its code stalled the loop) and ``none`` when code outside
    any request did. Counters that went back (a worker's restart) count from zero."""
    routes = last.routes | set(last.stalls) | set(last.blocked_seconds)
    figures = {}
    for route in sorted(routes):
        stalls = last.stalls.get(route, 0.0) - first.stalls.get(route, 0.0)
        blocked = last.blocked_seconds.get(route, 0.0) - first.blocked_seconds.get(route, 0.0)
        if stalls < 0 or blocked < 0:
            stalls, blocked = last.stalls.get(route, 0.0), last.blocked_seconds.get(route, 0.0)
        figures[route] = {"stalls": round(stalls), "blocked_seconds": round(blocked, 3)}
    return figures


def scrape_to_dict(scrape: Scrape) -> dict[str, Any]:
    """A scrape as JSON can hold it (bucket bounds as text: ``inf`` is not a JSON number)."""
    data = asdict(scrape)
    data["lag_buckets"] = [[repr(bound), count] for bound, count in sorted(scrape.lag_buckets.items())]
    data["routes"] = sorted(scrape.routes)
    return data


def scrape_from_dict(data: dict[str, Any]) -> Scrape:
    return Scrape(
        **{
            **data,
            "lag_buckets": {float(bound): count for bound, count in data["lag_buckets"]},
            "routes": set(data["routes"]),
        }
    )
