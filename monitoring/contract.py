"""The metric contract: every metric name, type, label set and bucket layout asyncproof exports.

The middleware, the collectors, the dashboards, the alert rules and the tests import from here and
never spell a metric name again. Names follow the OpenTelemetry semantic conventions translated to
Prometheus: base units, ``_seconds`` / ``_bytes`` suffixes, ``_total`` on counters only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["counter", "gauge", "histogram"]
# prometheus_client multiprocess modes for gauges. ``livesum``/``liveall`` files are removed when a
# worker dies, so a dead worker's gauges disappear instead of freezing at their last value.
GaugeMode = Literal["livesum", "liveall", "livemax", "livemin"]

# OpenTelemetry's recommended boundaries for http.server.request.duration, extended to cover the
# slow work the reference app runs (reports of tens of seconds).
HTTP_DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
)  # fmt: skip
# Event-loop lag: anything under a millisecond is healthy; a Kubernetes probe times out at 1 s.
LOOP_LAG_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
TASK_DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
)  # fmt: skip
DB_WAIT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

# Label values the cardinality guard maps unbounded input onto.
UNMATCHED_ROUTE = "unmatched"
NO_ROUTE = "none"  # a stall in code outside any request (start-up, a task the app spawned)
OTHER_METHOD = "_OTHER"
STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
TASK_OUTCOMES = ("success", "failure", "timeout", "cancelled")
DB_CONNECTION_STATES = ("used", "idle")
# nginx's convention for "client closed the connection before the response was sent".
CLIENT_CLOSED_REQUEST = 499


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the contract.

    ``name`` is what prometheus_client is given; ``exposed_name`` is what a scrape shows (counters
    gain ``_total``). ``gauge_mode`` says how a gauge combines across Gunicorn workers.
    """

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    gauge_mode: GaugeMode = "livesum"
    per_process: bool = False

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total" if self.kind == "counter" else self.name

    @property
    def series_names(self) -> tuple[str, ...]:
        """Sample names a scrape carries for this metric (``_bucket``/``_sum``/``_count`` for histograms)."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.exposed_name,)


# -- HTTP server (RED) ------------------------------------------------------------------------------
HTTP_SERVER_REQUEST_DURATION = MetricSpec(
    "http_server_request_duration_seconds",
    "histogram",
    "Duration of HTTP server requests, until the last body byte is sent.",
    ("http_request_method", "http_route", "http_response_status_code"),
    HTTP_DURATION_BUCKETS,
)
HTTP_SERVER_ACTIVE_REQUESTS = MetricSpec(
    "http_server_active_requests",
    "gauge",
    "Number of HTTP server requests in flight.",
    ("http_request_method",),
)

# -- Runtime ----------------------------------------------------------------------------------------
ASYNCIO_EVENT_LOOP_LAG = MetricSpec(
    "asyncio_event_loop_lag_seconds",
    "histogram",
    "How late the event loop ran a callback scheduled by the lag sampler.",
    buckets=LOOP_LAG_BUCKETS,
)
ASYNCIO_EVENT_LOOP_LAG_MAX = MetricSpec(
    "asyncio_event_loop_lag_max_seconds",
    "gauge",
    "Largest event-loop lag seen by each worker's sampler over its last reporting interval.",
    gauge_mode="liveall",
    per_process=True,
)
# Event-loop stalls (monitoring.stalls): a watchdog thread per worker notices a loop that has not run
# for the stall threshold and attributes the stall to the route of the request whose code held it
# (`none`: code outside any request, such as start-up or a task the app spawned).
ASYNCIO_EVENT_LOOP_STALLS = MetricSpec(
    "asyncio_event_loop_stalls",
    "counter",
    "Times the event loop did not run for the stall threshold, by the route whose code held it.",
    ("http_route",),
)
ASYNCIO_EVENT_LOOP_BLOCKED = MetricSpec(
    "asyncio_event_loop_blocked_seconds",
    "counter",
    "Seconds the event loop spent stalled, by the route whose code held it (added while a stall lasts).",
    ("http_route",),
)
ASYNCIO_EVENT_LOOP_STALLED = MetricSpec(
    "asyncio_event_loop_stalled_seconds",
    "gauge",
    "How long each worker's event loop has been stalled right now (0 while it runs).",
    gauge_mode="liveall",
    per_process=True,
)
ANYIO_THREADPOOL_BORROWED = MetricSpec(
    "anyio_threadpool_borrowed_tokens",
    "gauge",
    "Tokens of AnyIO's default thread limiter in use (sync endpoints and to_thread calls running).",
)
ANYIO_THREADPOOL_TOTAL = MetricSpec(
    "anyio_threadpool_total_tokens",
    "gauge",
    "Size of AnyIO's default thread limiter.",
)
ANYIO_THREADPOOL_WAITING = MetricSpec(
    "anyio_threadpool_waiting_tasks",
    "gauge",
    "Tasks waiting for a token of AnyIO's default thread limiter (the threadpool is saturated).",
)

# -- Executors (concurrent.futures pools) -----------------------------------------------------------
# `executor` is the name a pool was watched under (monitoring.executors.watch_executor), or `default`
# for the event loop's default executor (run_in_executor(None, ...), asyncio.to_thread). Every worker
# has pools of its own: in multiprocess mode the gauges are summed over live workers, like the
# threadpool's, so pending and busy compare with the deployment's total of max workers.
DEFAULT_EXECUTOR = "default"
EXECUTOR_PENDING_WORK = MetricSpec(
    "executor_pending_work_items",
    "gauge",
    "Work items submitted to the executor that no worker has started yet.",
    ("executor",),
)
EXECUTOR_BUSY_WORKERS = MetricSpec(
    "executor_busy_workers",
    "gauge",
    "Workers of the executor (threads or processes) running a work item.",
    ("executor",),
)
EXECUTOR_MAX_WORKERS = MetricSpec(
    "executor_max_workers",
    "gauge",
    "Most workers the executor may run at once.",
    ("executor",),
)

# -- Per-worker process metrics (a `pid` label in multiprocess mode) --------------------------------
PROCESS_RESIDENT_MEMORY = MetricSpec(
    "process_resident_memory_bytes",
    "gauge",
    "Resident memory size of the worker process.",
    gauge_mode="liveall",
    per_process=True,
)
PROCESS_CPU_SECONDS = MetricSpec(
    "process_cpu_seconds",
    "counter",
    "User and system CPU time spent by the worker process.",
    per_process=True,
)
PROCESS_OPEN_FDS = MetricSpec(
    "process_open_fds",
    "gauge",
    "Open file descriptors of the worker process.",
    gauge_mode="liveall",
    per_process=True,
)
PROCESS_THREADS = MetricSpec(
    "process_threads",
    "gauge",
    "Operating-system threads of the worker process.",
    gauge_mode="liveall",
    per_process=True,
)
PROCESS_START_TIME = MetricSpec(
    "process_start_time_seconds",
    "gauge",
    "Start time of the worker process since the Unix epoch.",
    gauge_mode="liveall",
    per_process=True,
)
SYSTEM_CPU_UTILIZATION = MetricSpec(
    "system_cpu_utilization_ratio",
    "gauge",
    "Share of the machine's CPU time that was busy since the previous sample (0 to 1).",
    gauge_mode="livemax",
)
SYSTEM_MEMORY_UTILIZATION = MetricSpec(
    "system_memory_utilization_ratio",
    "gauge",
    "Share of the machine's memory in use (0 to 1).",
    gauge_mode="livemax",
)

# -- Tasks ------------------------------------------------------------------------------------------
TASKS_SUBMITTED = MetricSpec(
    "tasks_submitted", "counter", "Tasks submitted for execution.", ("task", "backend")
)
TASKS_COMPLETED = MetricSpec(
    "tasks_completed",
    "counter",
    "Tasks that reached a terminal state, by outcome (success, failure, timeout, cancelled).",
    ("task", "backend", "outcome"),
)
TASK_DURATION = MetricSpec(
    "task_duration_seconds",
    "histogram",
    "Time a task spent executing.",
    ("task", "backend"),
    TASK_DURATION_BUCKETS,
)
TASK_QUEUE_WAIT = MetricSpec(
    "task_queue_wait_seconds",
    "histogram",
    "Time between a task's submission and the start of its execution.",
    ("task", "backend"),
    TASK_DURATION_BUCKETS,
)
TASKS_IN_PROGRESS = MetricSpec(
    "tasks_in_progress", "gauge", "Tasks executing right now.", ("task", "backend")
)

# -- Cache ------------------------------------------------------------------------------------------
CACHE_HITS = MetricSpec("cache_hits", "counter", "Cache look-ups that found a value.", ("cache",))
CACHE_MISSES = MetricSpec("cache_misses", "counter", "Cache look-ups that found nothing.", ("cache",))
CACHE_EVICTIONS = MetricSpec(
    "cache_evictions", "counter", "Entries removed to make room or because they expired.", ("cache",)
)
CACHE_SIZE = MetricSpec("cache_size_items", "gauge", "Entries held by the cache.", ("cache",))
CACHE_ERRORS = MetricSpec(
    "cache_errors",
    "counter",
    "Cache operations that failed (the backend was unreachable); reads fell through to their source.",
    ("cache",),
)

# -- Database connection pool -----------------------------------------------------------------------
DB_CLIENT_CONNECTIONS = MetricSpec(
    "db_client_connections",
    "gauge",
    "Connections of the pool, by state (used, idle).",
    ("pool", "state"),
)
DB_CLIENT_CONNECTIONS_MAX = MetricSpec(
    "db_client_connections_max", "gauge", "Most connections the pool may open.", ("pool",)
)
DB_CLIENT_CONNECTION_WAIT = MetricSpec(
    "db_client_connection_wait_seconds",
    "histogram",
    "Time spent waiting to check a connection out of the pool.",
    ("pool",),
    DB_WAIT_BUCKETS,
)
HEALTH_CHECK_STATUS = MetricSpec(
    "health_check_status",
    "gauge",
    "Readiness check result at its latest run: 1 passing, 0 failing (over workers, the lowest).",
    ("check",),
    gauge_mode="livemin",
)
DB_CLIENT_CONNECTION_TIMEOUTS = MetricSpec(
    "db_client_connection_timeouts",
    "counter",
    "Checkouts that gave up because the pool stayed exhausted past its timeout.",
    ("pool",),
)

ALL_METRICS: tuple[MetricSpec, ...] = tuple(
    value for value in list(globals().values()) if isinstance(value, MetricSpec)
)
BY_NAME: dict[str, MetricSpec] = {spec.exposed_name: spec for spec in ALL_METRICS}

# Client side: what the load generator (the Locust master) exports during a run, so dashboards can show
# it next to the server's figures. Not registered by `instrument()`.
LOCUST_USERS = MetricSpec("locust_users", "gauge", "Simulated users running.")
LOCUST_REQUESTS = MetricSpec(
    "locust_requests", "counter", "Requests the load generator completed.", ("method", "name")
)
LOCUST_REQUEST_FAILURES = MetricSpec(
    "locust_request_failures", "counter", "Requests the load generator counted as failed.", ("method", "name")
)
LOCUST_RESPONSE_TIME = MetricSpec(
    "locust_response_time_seconds",
    "histogram",
    "Response time seen by the load generator (raw timings, not Locust's rounded ones).",
    ("method", "name"),
    HTTP_DURATION_BUCKETS,
)
CLIENT_METRICS: tuple[MetricSpec, ...] = (
    LOCUST_USERS,
    LOCUST_REQUESTS,
    LOCUST_REQUEST_FAILURES,
    LOCUST_RESPONSE_TIME,
)
CLIENT_BY_NAME: dict[str, MetricSpec] = {spec.exposed_name: spec for spec in CLIENT_METRICS}
