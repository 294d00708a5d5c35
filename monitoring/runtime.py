"""Runtime metrics nobody else exports: event-loop lag, AnyIO threadpool saturation, per-worker process.

One light task per worker wakes every ``interval`` seconds. How late it wakes is the event-loop lag
(asyncio API only, so uvloop works too). On the same tick it samples AnyIO's default thread limiter
(which only the loop's own thread may read), updates the in-flight request gauge, and, in multiprocess
mode, writes this worker's process metrics and retires dead workers. Nothing here blocks: psutil reads
``/proc`` and CPU utilisation is measured between two ticks, never with ``cpu_percent(interval=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio.to_thread
import psutil
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from asyncproof.monitoring import contract
from asyncproof.monitoring.metrics import Metrics
from asyncproof.monitoring.multiprocess import sweep
from asyncproof.monitoring.recorder import HttpRecorder

logger = logging.getLogger("asyncproof.runtime")


def process_stats(process: psutil.Process) -> dict[str, float]:
    """Resident memory, CPU seconds, open fds, threads and start time of one process, read at once."""
    with process.oneshot():
        cpu = process.cpu_times()
        return {
            contract.PROCESS_RESIDENT_MEMORY.name: float(process.memory_info().rss),
            contract.PROCESS_CPU_SECONDS.exposed_name: cpu.user + cpu.system,
            contract.PROCESS_OPEN_FDS.name: float(process.num_fds()),
            contract.PROCESS_THREADS.name: float(process.num_threads()),
            contract.PROCESS_START_TIME.name: process.create_time(),
        }


class ProcessCollector(Collector):
    """Single-process mode: this process's metrics, read at scrape time, with a ``pid`` label.

    The same names and labels as multiprocess mode, where each worker writes them on its ticks.
    """

    def __init__(self, process: psutil.Process | None = None) -> None:
        self._process = process or psutil.Process()

    def collect(self) -> Iterable[Metric]:
        stats = process_stats(self._process)
        pid = str(self._process.pid)
        for spec in contract.ALL_METRICS:
            if not spec.per_process or spec.exposed_name not in stats:
                continue
            family: CounterMetricFamily | GaugeMetricFamily
            if spec.kind == "counter":
                family = CounterMetricFamily(spec.name, spec.help, labels=["pid"])
            else:
                family = GaugeMetricFamily(spec.name, spec.help, labels=["pid"])
            family.add_metric([pid], stats[spec.exposed_name])
            yield family


class RuntimeSampler:
    """The per-worker background task; ``start()``/``stop()`` run from the ASGI lifespan."""

    def __init__(
        self,
        metrics: Metrics,
        recorder: HttpRecorder,
        *,
        interval: float,
        flush_interval: float,
        report_interval: float,
        multiprocess_dir: str | None,
    ) -> None:
        if interval <= 0 or flush_interval <= 0 or report_interval <= 0:
            raise ValueError("sampler intervals must be positive numbers of seconds")
        self.metrics = metrics
        self.recorder = recorder
        self.interval = interval
        self.flush_interval = flush_interval
        self.report_interval = report_interval
        self.multiprocess_dir = multiprocess_dir
        self._task: asyncio.Task[None] | None = None
        self._process = psutil.Process()
        self._lag_max = 0.0
        # The middlewares' RouteLabels.walk: route objects that another path now leads to must stop
        # carrying their remembered labels (checked on each flush; nothing when no route was added).
        self.route_walks: list[Callable[[], None]] = []

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        psutil.cpu_percent(interval=None)  # primes the between-ticks measurement
        self._task = asyncio.get_running_loop().create_task(self._run(), name="asyncproof-runtime-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.metrics.loop_heartbeat.set(0)  # no tick due: a stopped sampler is not a stall
        self.sample_now()

    def sample_now(self) -> None:
        """Update the in-flight gauge, read the threadpool and the executors; in the loop, right before a
        scrape."""
        self.recorder.flush()
        self.sample_threadpool()
        self.sample_executors()

    def sample_threadpool(self) -> None:
        limiter = anyio.to_thread.current_default_thread_limiter()
        self.metrics.threadpool_borrowed.set(limiter.borrowed_tokens)
        self.metrics.threadpool_total.set(limiter.total_tokens)
        self.metrics.threadpool_waiting.set(limiter.statistics().tasks_waiting)

    def sample_executors(self) -> None:
        """The watched pools and this loop's default executor (monitoring.executors)."""
        self.metrics.executors.sample(asyncio.get_running_loop())

    def report(self) -> None:
        """Machine-wide utilisation, and in multiprocess mode this worker's process metrics and sweeps."""
        self.metrics.system_cpu.set(psutil.cpu_percent(interval=None) / 100)
        self.metrics.system_memory.set(psutil.virtual_memory().percent / 100)
        self.metrics.loop_lag_max.set(self._lag_max)
        self._lag_max = 0.0
        if not self.multiprocess_dir:
            return
        for name, value in process_stats(self._process).items():
            self.metrics.per_process_gauges[name].set(value)
        sweep(self.multiprocess_dir, wait=False)  # never wait on the loop for a scrape to end

    async def _run(self) -> None:
        try:
            await self._ticks()
        finally:  # cancelled, or failed where it should not: a heartbeat left behind is no stall
            self.metrics.loop_heartbeat.set(0)

    async def _ticks(self) -> None:
        loop = asyncio.get_running_loop()
        lag_histogram: Any = self.metrics.loop_lag
        provisional = self.metrics.lag_provisional
        heartbeat: Any = self.metrics.loop_heartbeat
        next_flush = next_report = loop.time()
        while True:
            expected = loop.time() + self.interval
            # When this tick is due: a scrape that finds it overdue knows the loop is stuck, and for
            # how long, before the stall ends and the lag can be measured here.
            heartbeat.set(time.monotonic() + self.interval)
            await asyncio.sleep(self.interval)
            now = loop.time()
            lag = max(0.0, now - expected)
            # The stall watchdog observed a stall as it went: this tick's lag settles that observation
            # (its bucket) instead of being observed a second time.
            if not (provisional.pending and provisional.take(loop, lag)):
                lag_histogram.observe(lag)
            self._lag_max = max(self._lag_max, lag)
            try:
                self.sample_threadpool()
                self.sample_executors()
                if now >= next_flush:
                    self.recorder.flush()
                    for walk in self.route_walks:  # route labels: notice routes added since the last
                        walk()
                    next_flush = now + self.flush_interval
                if now >= next_report:
                    self.report()
                    next_report = now + self.report_interval
            except Exception:  # a metrics hiccup must never kill the sampler (or the worker)
                logger.exception("runtime sampler tick failed in pid %d", os.getpid())
                heartbeat.set(time.monotonic() + min(1.0, self.report_interval))
                await asyncio.sleep(min(1.0, self.report_interval))
