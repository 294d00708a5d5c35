"""Runtime: event-loop lag and stalls (which route blocked the loop), the AnyIO threadpool and the
executors, memory and CPU per worker."""

from asyncproof.monitoring.contract import (
    ANYIO_THREADPOOL_BORROWED,
    ANYIO_THREADPOOL_TOTAL,
    ANYIO_THREADPOOL_WAITING,
    ASYNCIO_EVENT_LOOP_BLOCKED,
    ASYNCIO_EVENT_LOOP_LAG,
    ASYNCIO_EVENT_LOOP_LAG_MAX,
    ASYNCIO_EVENT_LOOP_STALLED,
    ASYNCIO_EVENT_LOOP_STALLS,
    EXECUTOR_BUSY_WORKERS,
    EXECUTOR_MAX_WORKERS,
    EXECUTOR_PENDING_WORK,
    PROCESS_CPU_SECONDS,
    PROCESS_OPEN_FDS,
    PROCESS_RESIDENT_MEMORY,
    PROCESS_THREADS,
    SYSTEM_CPU_UTILIZATION,
    SYSTEM_MEMORY_UTILIZATION,
)
from dashboards.common import INSTANCE, RATE, make_dashboard, name, panel, quantile

selected = 'instance=~"$instance"'

dashboard = make_dashboard(
    "runtime",
    "Is the event loop free? Is the threadpool saturated? What does each worker hold?",
    [INSTANCE],
    [
        panel(
            "Event-loop lag, worst per worker",
            [(f"max by (pid) ({name(ASYNCIO_EVENT_LOOP_LAG_MAX)}{{{selected}}})", "worker {{pid}}")],
            "s",
            0,
            0,
        ),
        panel(
            "Event-loop lag p99 (all workers)",
            [(quantile(0.99, ASYNCIO_EVENT_LOOP_LAG, "", selected), "p99")],
            "s",
            12,
            0,
        ),
        panel(
            "AnyIO threadpool tokens",
            [
                (f"sum({name(ANYIO_THREADPOOL_BORROWED)}{{{selected}}})", "borrowed"),
                (f"sum({name(ANYIO_THREADPOOL_WAITING)}{{{selected}}})", "waiting"),
                (f"sum({name(ANYIO_THREADPOOL_TOTAL)}{{{selected}}})", "total"),
            ],
            "short",
            0,
            8,
        ),
        panel(
            "Resident memory per worker",
            [(f"max by (pid) ({name(PROCESS_RESIDENT_MEMORY)}{{{selected}}})", "worker {{pid}}")],
            "bytes",
            12,
            8,
        ),
        panel(
            "CPU per worker",
            [(f"sum by (pid) (rate({name(PROCESS_CPU_SECONDS)}{{{selected}}}[{RATE}]))", "worker {{pid}}")],
            "percentunit",
            0,
            16,
        ),
        panel(
            "Open files and threads per worker",
            [
                (f"max by (pid) ({name(PROCESS_OPEN_FDS)}{{{selected}}})", "fds {{pid}}"),
                (f"max by (pid) ({name(PROCESS_THREADS)}{{{selected}}})", "threads {{pid}}"),
            ],
            "short",
            12,
            16,
        ),
        panel(
            "Machine CPU and memory",
            [
                (f"max({name(SYSTEM_CPU_UTILIZATION)}{{{selected}}})", "cpu"),
                (f"max({name(SYSTEM_MEMORY_UTILIZATION)}{{{selected}}})", "memory"),
            ],
            "percentunit",
            0,
            24,
            w=24,
        ),
        panel(
            "Event-loop stalls per route (the route whose code held the loop; none: outside requests)",
            [
                (
                    f"sum by (http_route) (rate({name(ASYNCIO_EVENT_LOOP_STALLS)}{{{selected}}}[{RATE}]))",
                    "{{http_route}}",
                )
            ],
            "short",
            0,
            32,
        ),
        panel(
            "Share of time the loop was blocked, per route",
            [
                (
                    f"sum by (http_route) (rate({name(ASYNCIO_EVENT_LOOP_BLOCKED)}{{{selected}}}[{RATE}]))",
                    "{{http_route}}",
                )
            ],
            "percentunit",
            12,
            32,
        ),
        panel(
            "Current stall per worker (how long its loop has been stuck now)",
            [(f"max by (pid) ({name(ASYNCIO_EVENT_LOOP_STALLED)}{{{selected}}})", "worker {{pid}}")],
            "s",
            0,
            40,
        ),
        panel(
            "Executors: busy workers / max workers",
            [
                (
                    f"sum by (executor) ({name(EXECUTOR_BUSY_WORKERS)}{{{selected}}})"
                    f" / sum by (executor) ({name(EXECUTOR_MAX_WORKERS)}{{{selected}}})",
                    "{{executor}}",
                )
            ],
            "percentunit",
            12,
            40,
        ),
        panel(
            "Executors: work waiting for a worker",
            [(f"sum by (executor) ({name(EXECUTOR_PENDING_WORK)}{{{selected}}})", "{{executor}}")],
            "short",
            0,
            48,
            w=24,
        ),
    ],
)
