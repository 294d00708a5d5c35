"""prometheus_client objects for the contract's metrics, made once per registry."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from asyncproof.monitoring import contract
from asyncproof.monitoring.contract import MetricSpec
from asyncproof.monitoring.executors import WatchedExecutors
from asyncproof.monitoring.multiprocess import multiprocess_dir
from asyncproof.monitoring.recorder import HttpRecorder


def make_metric(
    spec: MetricSpec,
    registry: CollectorRegistry | None,
    *,
    extra_labels: tuple[str, ...] = (),
    buckets: tuple[float, ...] | None = None,
) -> Any:
    """A prometheus_client metric for ``spec``, registered in ``registry`` (``None``: unregistered)."""
    labels = spec.labels + extra_labels
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, labels, registry=registry, multiprocess_mode=spec.gauge_mode)
    return Histogram(spec.name, spec.help, labels, registry=registry, buckets=buckets or spec.buckets)


_made = threading.Lock()
# Per-worker gauges with an attribute of their own, not made again among the process metrics.
_OWN_PER_PROCESS_GAUGES = (contract.ASYNCIO_EVENT_LOOP_LAG_MAX, contract.ASYNCIO_EVENT_LOOP_STALLED)
# The instance lives on its registry, so that it goes when the registry goes (a weak mapping from
# registry to instance would keep both: the instance refers to its registry).
_ATTRIBUTE = "_asyncproof_metrics"


class Metrics:
    """Every metric of the contract, ready to record.

    One instance per registry: ``Metrics(registry)`` makes it the first time and hands back the same
    one after that, so :func:`asyncproof.monitoring.instrument` (on as many apps as there are), the
    cache, database and task helpers and the app's own code all write to the same series instead of
    failing to register a name twice. A process without an app (a Celery worker, a process-pool
    child) makes its own.

    ``http_buckets`` and ``http_labels`` (extra label names) shape the request histogram; ``None``
    and ``()`` take whatever the registry's instance has, or the contract's layout for a new one.
    Asking an existing instance for another layout is a ``ValueError``: give that app a registry of
    its own.
    """

    registry: CollectorRegistry
    http_buckets: tuple[float, ...]
    http_labels: tuple[str, ...]

    def __new__(
        cls,
        registry: CollectorRegistry | None = None,
        *,
        http_buckets: Sequence[float] | None = None,
        http_labels: Sequence[str] = (),
    ) -> Metrics:
        registry = REGISTRY if registry is None else registry
        buckets = tuple(float(b) for b in http_buckets) if http_buckets is not None else None
        with _made:
            made: Metrics | None = getattr(registry, _ATTRIBUTE, None)
            if made is None:
                made = super().__new__(cls)
                made._make(registry, buckets or contract.HTTP_DURATION_BUCKETS, tuple(http_labels))
                setattr(registry, _ATTRIBUTE, made)
            elif (buckets is not None and buckets != made.http_buckets) or (
                http_labels and tuple(http_labels) != made.http_labels
            ):
                raise ValueError(
                    f"this registry's request histogram already has buckets {made.http_buckets} and extra "
                    f"labels {made.http_labels}; an app that needs others must pass registry= a "
                    "CollectorRegistry of its own"
                )
        return made

    def _make(self, registry: CollectorRegistry, buckets: tuple[float, ...], labels: tuple[str, ...]) -> None:
        self.registry = registry
        self.http_buckets = buckets
        self.http_labels = labels
        folder = multiprocess_dir()
        self.multiprocess = folder is not None
        r = self.registry
        self.http_active = make_metric(contract.HTTP_SERVER_ACTIVE_REQUESTS, r)
        # The request histogram is the recorder's own storage (shared memory, see
        # monitoring.recorder); one per registry, so the in-flight counts are not set by two.
        self.http_recorder = HttpRecorder(
            contract.HTTP_SERVER_REQUEST_DURATION,
            self.http_active,
            buckets=buckets,
            extra_labels=labels,
            multiprocess_dir=folder,
        )
        if folder is None:
            r.register(self.http_recorder)  # in multiprocess mode the scrape reads its file
        self.loop_lag = make_metric(contract.ASYNCIO_EVENT_LOOP_LAG, r)
        self.threadpool_borrowed = make_metric(contract.ANYIO_THREADPOOL_BORROWED, r)
        self.threadpool_total = make_metric(contract.ANYIO_THREADPOOL_TOTAL, r)
        self.threadpool_waiting = make_metric(contract.ANYIO_THREADPOOL_WAITING, r)
        self.executor_pending = make_metric(contract.EXECUTOR_PENDING_WORK, r)
        self.executor_busy = make_metric(contract.EXECUTOR_BUSY_WORKERS, r)
        self.executor_max = make_metric(contract.EXECUTOR_MAX_WORKERS, r)
        # The pools these report, read by the runtime sampler on its ticks.
        self.executors = WatchedExecutors(self)
        self.system_cpu = make_metric(contract.SYSTEM_CPU_UTILIZATION, r)
        self.system_memory = make_metric(contract.SYSTEM_MEMORY_UTILIZATION, r)
        self.tasks_submitted = make_metric(contract.TASKS_SUBMITTED, r)
        self.tasks_completed = make_metric(contract.TASKS_COMPLETED, r)
        self.task_duration = make_metric(contract.TASK_DURATION, r)
        self.task_queue_wait = make_metric(contract.TASK_QUEUE_WAIT, r)
        self.tasks_in_progress = make_metric(contract.TASKS_IN_PROGRESS, r)
        self.cache_hits = make_metric(contract.CACHE_HITS, r)
        self.cache_misses = make_metric(contract.CACHE_MISSES, r)
        self.cache_evictions = make_metric(contract.CACHE_EVICTIONS, r)
        self.cache_size = make_metric(contract.CACHE_SIZE, r)
        self.cache_errors = make_metric(contract.CACHE_ERRORS, r)
        self.db_connections = make_metric(contract.DB_CLIENT_CONNECTIONS, r)
        self.db_connections_max = make_metric(contract.DB_CLIENT_CONNECTIONS_MAX, r)
        self.db_connection_wait = make_metric(contract.DB_CLIENT_CONNECTION_WAIT, r)
        self.db_connection_timeouts = make_metric(contract.DB_CLIENT_CONNECTION_TIMEOUTS, r)
        self.health_check_status = make_metric(contract.HEALTH_CHECK_STATUS, r)
        # Per-worker metrics: a `liveall` gauge each (pid label, removed with the worker). They stay
        # out of the registry, whose default process collector already uses these names; in
        # multiprocess mode the scrape reads them from the workers' files.
        self.loop_lag_max = make_metric(contract.ASYNCIO_EVENT_LOOP_LAG_MAX, None if self.multiprocess else r)
        self.per_process_gauges: dict[str, Any] = {}
        if self.multiprocess:
            for spec in contract.ALL_METRICS:
                if spec.per_process and spec not in _OWN_PER_PROCESS_GAUGES:
                    gauge_spec = MetricSpec(spec.exposed_name, "gauge", spec.help, gauge_mode="liveall")
                    self.per_process_gauges[spec.exposed_name] = make_metric(gauge_spec, None)
        # The lag sampler's heartbeat (when its next tick is due), kept out of the registry too: the
        # exposition turns an overdue one into the stuck worker's lag max and never exports it.
        from asyncproof.monitoring.exposition_process import HEARTBEAT

        self.loop_heartbeat = make_metric(HEARTBEAT, None)
        # Event-loop stalls, written by the watchdog thread (monitoring.stalls): counts and blocked
        # seconds per route; the current stall per worker, a gauge of its own like the lag max; and
        # the lag histogram's provisional observations of stalls still going on.
        from asyncproof.monitoring.stalls import ProvisionalLag

        self.loop_stalls = make_metric(contract.ASYNCIO_EVENT_LOOP_STALLS, r)
        self.loop_blocked = make_metric(contract.ASYNCIO_EVENT_LOOP_BLOCKED, r)
        self.loop_stalled = make_metric(contract.ASYNCIO_EVENT_LOOP_STALLED, None if self.multiprocess else r)
        self.lag_provisional = ProvisionalLag(self.loop_lag)
