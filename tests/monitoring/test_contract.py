from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from asyncproof.monitoring import contract
from asyncproof.monitoring.metrics import Metrics

# Names that other code (dashboards, rules, checks) relies on: they must never change.
CORE = {
    "http_server_request_duration_seconds": (
        "histogram",
        ("http_request_method", "http_route", "http_response_status_code"),
    ),
    "http_server_active_requests": ("gauge", ("http_request_method",)),
    "asyncio_event_loop_lag_seconds": ("histogram", ()),
    "anyio_threadpool_borrowed_tokens": ("gauge", ()),
    "anyio_threadpool_total_tokens": ("gauge", ()),
    "anyio_threadpool_waiting_tasks": ("gauge", ()),
    "tasks_submitted_total": ("counter", ("task", "backend")),
    "tasks_completed_total": ("counter", ("task", "backend", "outcome")),
    "task_duration_seconds": ("histogram", ("task", "backend")),
    "task_queue_wait_seconds": ("histogram", ("task", "backend")),
    "tasks_in_progress": ("gauge", ("task", "backend")),
    "cache_hits_total": ("counter", ("cache",)),
    "cache_misses_total": ("counter", ("cache",)),
    "cache_evictions_total": ("counter", ("cache",)),
    "cache_size_items": ("gauge", ("cache",)),
    "db_client_connections": ("gauge", ("pool", "state")),
    "db_client_connections_max": ("gauge", ("pool",)),
    "db_client_connection_wait_seconds": ("histogram", ("pool",)),
    "db_client_connection_timeouts_total": ("counter", ("pool",)),
    "process_resident_memory_bytes": ("gauge", ()),
    "process_cpu_seconds_total": ("counter", ()),
}


@pytest.mark.parametrize(("name", "expected"), sorted(CORE.items()))
def test_core_metric_names_types_and_labels_are_fixed(
    name: str, expected: tuple[str, tuple[str, ...]]
) -> None:
    spec = contract.BY_NAME[name]
    assert (spec.kind, spec.labels) == expected


@pytest.mark.parametrize("spec", contract.ALL_METRICS + contract.CLIENT_METRICS, ids=lambda s: s.name)
def test_names_follow_prometheus_conventions(spec: contract.MetricSpec) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name)
    assert spec.exposed_name.endswith("_total") == (spec.kind == "counter")
    if spec.kind == "histogram":
        assert spec.buckets == tuple(sorted(spec.buckets))
        assert spec.name.endswith("_seconds")
    assert spec.help.endswith(".")


def test_every_contract_metric_is_made_by_metrics() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    registered = {metric.name for metric in registry.collect()}
    per_process = {spec.name for spec in contract.ALL_METRICS if spec.per_process}
    for spec in contract.ALL_METRICS:
        if spec.name not in per_process:
            assert spec.name in registered, spec.name


def test_client_side_metrics_are_not_registered_by_the_app() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    registered = {metric.name for metric in registry.collect()}
    assert not registered & {spec.name for spec in contract.CLIENT_METRICS}
