"""Executor saturation: pending work, busy workers and max workers of real thread and process pools."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
import uvloop
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from asyncproof import monitoring
from asyncproof.monitoring import contract
from asyncproof.monitoring.exposition import Exposition
from asyncproof.monitoring.metrics import Metrics
from asyncproof.monitoring.multiprocess import mark_process_dead
from tests.monitoring.helpers import client_for, series

FIGURES = {
    "pending": contract.EXECUTOR_PENDING_WORK.name,
    "busy": contract.EXECUTOR_BUSY_WORKERS.name,
    "max": contract.EXECUTOR_MAX_WORKERS.name,
}
PoolFactory = Callable[..., Executor]


class Blocker:
    """Work items that hold their thread until released, and a way to wait until n of them run."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._started = threading.Semaphore(0)

    def __call__(self) -> None:
        self._started.release()
        self.release.wait(10)

    def wait_running(self, count: int) -> None:
        for _ in range(count):
            assert self._started.acquire(timeout=5), "a work item never started"


@pytest.fixture
def blocker() -> Iterator[Blocker]:
    made = Blocker()
    yield made
    made.release.set()


@pytest.fixture
def pools(blocker: Blocker) -> Iterator[PoolFactory]:
    """Thread or process pools, every one shut down at teardown (blocked items released first)."""
    made: list[Executor] = []

    def make(kind: type[Executor], workers: int) -> Executor:
        pool: Executor
        if kind is ProcessPoolExecutor:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        else:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="test-executors")
        made.append(pool)
        return pool

    yield make
    blocker.release.set()
    for pool in made:
        pool.shutdown(wait=True, cancel_futures=True)


def figures(text: str, executor: str) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("executor") == executor:
                found[sample.name] = sample.value
    return {figure: found[name] for figure, name in FIGURES.items() if name in found}


def sampled(
    metrics: Metrics, executor: str, loop: asyncio.AbstractEventLoop | None = None
) -> dict[str, float]:
    metrics.executors.sample(loop)
    values = {
        figure: metrics.registry.get_sample_value(name, {"executor": executor})
        for figure, name in FIGURES.items()
    }
    return {figure: value for figure, value in values.items() if value is not None}


def make_app() -> tuple[FastAPI, monitoring.Instrumentation]:
    app = FastAPI()
    return app, monitoring.instrument(app, registry=CollectorRegistry())


@pytest.mark.anyio
async def test_a_saturated_thread_pool_shows_its_queue_and_busy_threads_in_a_scrape(
    pools: PoolFactory, blocker: Blocker
) -> None:
    app, instrumentation = make_app()
    pool = pools(ThreadPoolExecutor, 2)
    instrumentation.watch_executor(pool, "reports")
    async with client_for(app) as client:
        assert figures((await client.get("/metrics")).text, "reports") == {"pending": 0, "busy": 0, "max": 2}
        work = [pool.submit(blocker) for _ in range(5)]
        blocker.wait_running(2)
        saturated = figures((await client.get("/metrics")).text, "reports")
        blocker.release.set()
        for future in work:
            future.result(timeout=5)
        # a thread counts as busy from the moment it takes an item until it finds the queue empty
        deadline = time.monotonic() + 5
        while (drained := figures((await client.get("/metrics")).text, "reports"))["busy"] and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)
    assert saturated == {"pending": 3, "busy": 2, "max": 2}
    assert drained == {"pending": 0, "busy": 0, "max": 2}


def test_a_saturated_process_pool_shows_its_queue_and_busy_processes(pools: PoolFactory) -> None:
    metrics = Metrics(CollectorRegistry())
    pool = pools(ProcessPoolExecutor, 2)
    monitoring.watch_executor(pool, "cpu", metrics)
    assert sampled(metrics, "cpu") == {"pending": 0, "busy": 0, "max": 2}
    work = [pool.submit(time.sleep, 1.5) for _ in range(5)]
    deadline = time.monotonic() + 10
    # the pool's thread hands the work to the children's queue soon after submit()
    while (saturated := sampled(metrics, "cpu"))["busy"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    # Two run in a child, three wait (one of them in the call queue, already handed to the children).
    assert saturated == {"pending": 3, "busy": 2, "max": 2}
    for future in work:
        future.result(timeout=20)
    assert sampled(metrics, "cpu") == {"pending": 0, "busy": 0, "max": 2}


@pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_the_default_executor_is_reported_once_the_loop_has_one(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    metrics = Metrics(CollectorRegistry())
    loop = new_loop()
    try:
        assert sampled(metrics, "default", loop) == {}
        started = threading.Event()
        release = threading.Event()

        def hold() -> None:
            started.set()
            release.wait(10)

        future = loop.run_in_executor(None, hold)
        assert started.wait(5)
        during = sampled(metrics, "default", loop)
        release.set()
        loop.run_until_complete(future)
        # the result reaches the loop while the thread may still be leaving its work item
        deadline = time.monotonic() + 5
        while (after := sampled(metrics, "default", loop)).get("busy") and time.monotonic() < deadline:
            time.sleep(0.01)
        loop.run_until_complete(loop.shutdown_default_executor())
        shut_down = sampled(metrics, "default", loop)
    finally:
        release.set()
        loop.close()
    default_size = min(32, (os.cpu_count() or 1) + 4)
    assert during == {"pending": 0, "busy": 1, "max": default_size}
    assert after == {"pending": 0, "busy": 0, "max": default_size}
    assert shut_down == {}


def test_a_watched_default_executor_is_reported_under_its_name_only(pools: PoolFactory) -> None:
    metrics = Metrics(CollectorRegistry())
    loop = asyncio.new_event_loop()
    try:
        pool = pools(ThreadPoolExecutor, 3)
        loop.set_default_executor(pool)
        monitoring.watch_executor(pool, "main", metrics)
        assert sampled(metrics, "main", loop)["max"] == 3
        assert sampled(metrics, "default", loop) == {}
    finally:
        loop.close()


def test_a_shut_down_pool_leaves_the_figures_and_frees_its_name(pools: PoolFactory, blocker: Blocker) -> None:
    metrics = Metrics(CollectorRegistry())
    pool = pools(ThreadPoolExecutor, 1)
    monitoring.watch_executor(pool, "jobs", metrics)
    running = pool.submit(blocker)
    blocker.wait_running(1)
    pool.shutdown(wait=False)
    # still finishing its work: still reported, and the name still taken
    assert sampled(metrics, "jobs") == {"pending": 0, "busy": 1, "max": 1}
    with pytest.raises(ValueError, match="already watched as 'jobs'"):
        monitoring.watch_executor(pools(ThreadPoolExecutor, 1), "jobs", metrics)
    blocker.release.set()
    running.result(timeout=5)
    pool.shutdown(wait=True)
    assert sampled(metrics, "jobs") == {}
    assert series(metrics.registry, FIGURES["max"]) == []
    replacement = pools(ThreadPoolExecutor, 4)
    monitoring.watch_executor(replacement, "jobs", metrics)
    assert sampled(metrics, "jobs") == {"pending": 0, "busy": 0, "max": 4}


def test_a_collected_pool_leaves_the_figures() -> None:
    metrics = Metrics(CollectorRegistry())
    pool = ThreadPoolExecutor(2)
    monitoring.watch_executor(pool, "short-lived", metrics)
    assert sampled(metrics, "short-lived")["max"] == 2
    del pool  # never used, so no thread refers to it: watching does not keep it alive
    assert sampled(metrics, "short-lived") == {}


@pytest.mark.parametrize(
    "name", ["", "two words", "x" * 65, "caf\u00e9", "-", 'quote"', "default", None], ids=repr
)
def test_a_name_that_is_no_good_label_value_is_a_value_error(name: object, pools: PoolFactory) -> None:
    metrics = Metrics(CollectorRegistry())
    with pytest.raises(ValueError, match="executor name"):
        monitoring.watch_executor(pools(ThreadPoolExecutor, 1), name, metrics)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["reports", "cpu-bound", "pool.v2", "tenant:acme", "_", "x" * 64])
def test_names_made_of_letters_digits_and_separators_are_accepted(name: str, pools: PoolFactory) -> None:
    metrics = Metrics(CollectorRegistry())
    monitoring.watch_executor(pools(ThreadPoolExecutor, 1), name, metrics)
    assert sampled(metrics, name)["max"] == 1


def test_a_name_or_pool_in_use_is_a_value_error_and_watching_the_same_pool_again_is_not(
    pools: PoolFactory,
) -> None:
    metrics = Metrics(CollectorRegistry())
    pool = pools(ThreadPoolExecutor, 1)
    monitoring.watch_executor(pool, "work", metrics)
    monitoring.watch_executor(pool, "work", metrics)  # an app factory run twice, say
    with pytest.raises(ValueError, match="another executor is already watched as 'work'"):
        monitoring.watch_executor(pools(ThreadPoolExecutor, 1), "work", metrics)
    with pytest.raises(ValueError, match="this executor is already watched as 'work'"):
        monitoring.watch_executor(pool, "other-name", metrics)
    metrics.executors.unwatch("work")
    monitoring.watch_executor(pools(ThreadPoolExecutor, 2), "work", metrics)
    assert sampled(metrics, "work")["max"] == 2


def test_only_thread_and_process_pools_can_be_watched() -> None:
    class Inline(Executor):
        def submit(self, fn: Callable[..., object], /, *args: object, **kwargs: object) -> Future[object]:
            future: Future[object] = Future()
            future.set_result(fn(*args, **kwargs))
            return future

    with pytest.raises(TypeError, match="ThreadPoolExecutor and ProcessPoolExecutor"):
        monitoring.watch_executor(Inline(), "inline", Metrics(CollectorRegistry()))


def test_busy_threads_stay_right_after_bursts_of_quick_work(pools: PoolFactory) -> None:
    # On 3.11 the pool's idle semaphore is released after every item: after bursts of quick work it
    # counts far more idle threads than the pool has, and busy ones would read 0.
    metrics = Metrics(CollectorRegistry())
    pool = pools(ThreadPoolExecutor, 2)
    monitoring.watch_executor(pool, "bursty", metrics)
    for _ in range(3):
        for future in [pool.submit(time.sleep, 0) for _ in range(20)]:
            future.result()
    release = threading.Event()
    running = [pool.submit(release.wait, 10) for _ in range(2)]
    try:
        time.sleep(0.1)  # both threads are in their items
        assert sampled(metrics, "bursty") == {"pending": 0, "busy": 2, "max": 2}
    finally:
        release.set()
        for future in running:
            future.result()
    time.sleep(0.1)
    assert sampled(metrics, "bursty") == {"pending": 0, "busy": 0, "max": 2}


def test_a_missing_attribute_skips_its_gauge_and_is_logged_once(
    pools: PoolFactory, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics(CollectorRegistry())
    pool = pools(ThreadPoolExecutor, 2)
    monitoring.watch_executor(pool, "odd", metrics)
    pool.submit(time.sleep, 0).result()
    time.sleep(0.05)  # the thread goes idle
    threads = pool._threads  # type: ignore[attr-defined]
    del pool._threads  # type: ignore[attr-defined]  # as on a Python that has no such thing
    try:
        with caplog.at_level(logging.WARNING, logger="asyncproof.runtime"):
            first = sampled(metrics, "odd")
            second = sampled(metrics, "odd")
    finally:
        pool._threads = threads  # type: ignore[attr-defined]  # for its shutdown
    assert first == second == {"pending": 0, "max": 2}
    assert [record.getMessage() for record in caplog.records] == [
        "executor 'odd': ThreadPoolExecutor has no attribute '_threads' on this Python; the "
        "executor_* figures that need it are not reported"
    ]


# A Gunicorn worker: multiprocess mode from before prometheus_client is imported, a pool of its own.
WORKER = """
import threading
from concurrent.futures import ThreadPoolExecutor
from prometheus_client import CollectorRegistry
from asyncproof import monitoring
from asyncproof.monitoring.metrics import Metrics

metrics = Metrics(CollectorRegistry())
assert metrics.multiprocess
release = threading.Event()
started = threading.Semaphore(0)

def hold():
    started.release()
    release.wait(10)

pool = ThreadPoolExecutor(2)
try:
    monitoring.watch_executor(pool, "reports", metrics)
    for _ in range({items}):
        pool.submit(hold)
    for _ in range(min({items}, 2)):
        assert started.acquire(timeout=5)
    metrics.executors.sample(None)
finally:
    release.set()
    pool.shutdown(wait=True, cancel_futures=True)
print(__import__("os").getpid())
"""


def test_workers_are_summed_in_multiprocess_mode(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    pids = []
    for items in (5, 1):
        worker = subprocess.run(
            [sys.executable, "-c", WORKER.format(items=items)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert worker.returncode == 0, worker.stderr
        pids.append(int(worker.stdout))
    exposition = Exposition(CollectorRegistry(), str(folder))
    both = figures(exposition.render(None)[0].decode(), "reports")
    mark_process_dead(pids[0], str(folder))
    one = figures(exposition.render(None)[0].decode(), "reports")
    assert both == {"pending": 3, "busy": 3, "max": 4}
    assert one == {"pending": 0, "busy": 1, "max": 2}  # a dead worker's pool is gone with it
