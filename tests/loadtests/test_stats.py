"""Exact percentiles from raw samples, and server figures from a real /metrics exposition."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from asyncproof.loadtests.stats import (
    Scrape,
    histogram_quantile,
    lag_quantile_between,
    parse_scrape,
    per_second,
    percentile,
    stalls_between,
    summarize,
)
from asyncproof.monitoring.metrics import Metrics


def test_percentiles_are_observed_values_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.5], 0.99) == 7.5
    assert percentile([], 0.5) is None
    # not Locust's rounding: 123.456 ms stays 123.456
    assert percentile([123.456, 0.5, 2.25], 0.99) == 123.456


def test_summary_counts_failures_and_keeps_slow_failures_in_the_percentiles() -> None:
    samples = [(0.0, 10.0, True)] * 98 + [(0.0, 1000.0, False)] * 2
    summary = summarize(samples, duration_seconds=10)
    assert (summary.count, summary.failures, summary.fail_ratio) == (100, 2, 0.02)
    assert summary.p50 == 10.0
    assert summary.p99 == 1000.0  # a timed-out request is slow, not absent
    assert summary.rps == 10.0


def test_samples_are_grouped_by_the_second_they_ended_in() -> None:
    start = 1000.0
    samples = [(1000.2, 1.0, True), (1000.9, 2.0, True), (1002.5, 3.0, False), (1010.0, 4.0, True)]
    assert per_second(samples, start, 3) == [[1.0, 2.0], [], [3.0]]


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.5, 0.005), (0.9, 0.01), (0.95, 0.055), (1.0, 0.1)],
)
def test_histogram_quantile_interpolates_like_prometheus(fraction: float, expected: float) -> None:
    # 100 observations: 50 <= 5 ms, 40 in (5 ms, 10 ms], 10 in (10 ms, 100 ms]
    buckets = [(0.005, 50.0), (0.01, 90.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(fraction, buckets) == pytest.approx(expected)


def test_histogram_quantile_in_the_inf_bucket_gives_the_largest_finite_bound() -> None:
    assert histogram_quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == 0.1
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_server_figures_come_from_a_real_exposition() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for lag in (0.0005, 0.0005, 0.3):
        metrics.loop_lag.observe(lag)
    metrics.loop_lag_max.set(0.3)
    metrics.threadpool_waiting.set(4)
    metrics.threadpool_borrowed.set(40)
    scrape = parse_scrape(generate_latest(registry).decode(), when=5.0)
    assert scrape.time == 5.0
    assert scrape.lag_max == 0.3
    assert (scrape.threadpool_waiting, scrape.threadpool_borrowed) == (4, 40)
    assert scrape.lag_buckets[0.001] == 2
    assert scrape.lag_buckets[float("inf")] == 3


def test_lag_quantile_covers_only_what_happened_between_two_scrapes() -> None:
    bounds = (0.001, 0.5, float("inf"))
    first = Scrape(time=0, lag_buckets=dict(zip(bounds, (1000.0, 1000.0, 1000.0), strict=True)))
    # since then: 10 more samples, all between 1 ms and 500 ms
    last = Scrape(time=10, lag_buckets=dict(zip(bounds, (1000.0, 1010.0, 1010.0), strict=True)))
    assert lag_quantile_between(first, last, 0.99) > 0.001
    # a worker restarted: its counts went down; nothing goes negative
    restarted = Scrape(time=10, lag_buckets=dict(zip(bounds, (500.0, 500.0, 500.0), strict=True)))
    assert lag_quantile_between(first, restarted, 0.99) is None


def test_stalls_per_route_are_what_happened_between_two_scrapes() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.http_recorder.record(("GET", "/work/async", 200), 0.3)
    metrics.http_recorder.record(("GET", "/items/{id}", 200), 0.01)
    metrics.loop_stalls.labels("/work/async").inc(2)
    metrics.loop_blocked.labels("/work/async").inc(0.6)
    first = parse_scrape(generate_latest(registry).decode(), when=0.0)
    metrics.loop_stalls.labels("/work/async").inc(3)
    metrics.loop_blocked.labels("/work/async").inc(0.95)
    metrics.loop_stalls.labels("none").inc()
    metrics.loop_blocked.labels("none").inc(0.2)
    last = parse_scrape(generate_latest(registry).decode(), when=10.0)
    assert stalls_between(first, last) == {
        "/items/{id}": {"stalls": 0, "blocked_seconds": 0.0},  # counted requests, never stalled
        "/work/async": {"stalls": 3, "blocked_seconds": 0.95},
        "none": {"stalls": 1, "blocked_seconds": 0.2},
    }
    # a worker restarted in between: its counters start again from zero
    restarted = Scrape(time=20, stalls={"/work/async": 1.0}, blocked_seconds={"/work/async": 0.25})
    assert stalls_between(last, restarted)["/work/async"] == {"stalls": 1, "blocked_seconds": 0.25}
