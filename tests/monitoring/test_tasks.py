from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from monitoring.metrics import Metrics
from monitoring.tasks import TaskTracker

LABELS = {"task": "report", "backend": "executor"}


@pytest.fixture
def tracker() -> TaskTracker:
    return TaskTracker(Metrics(CollectorRegistry()), "executor")


def value(tracker: TaskTracker, name: str, **extra: str) -> float:
    return tracker.metrics.registry.get_sample_value(name, {**LABELS, **extra}) or 0.0


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "success"),
        (ValueError("bad"), "failure"),
        (TimeoutError(), "timeout"),
        (asyncio.CancelledError(), "cancelled"),
    ],
)
def test_outcome_follows_how_the_task_ended(
    tracker: TaskTracker, error: BaseException | None, outcome: str
) -> None:
    submitted = tracker.submitted("report")
    raised: BaseException | None = None
    try:
        with tracker.track("report", submitted_at=submitted):
            if error is not None:
                raise error
    except BaseException as caught:
        raised = caught
    assert raised is error  # re-raised unchanged
    assert value(tracker, "tasks_submitted_total") == 1
    assert value(tracker, "tasks_completed_total", outcome=outcome) == 1
    assert value(tracker, "task_duration_seconds_count") == 1
    assert value(tracker, "tasks_in_progress") == 0


def test_in_progress_and_queue_wait_while_a_thread_runs_the_task(tracker: TaskTracker) -> None:
    submitted = tracker.submitted("report")
    started = threading.Event()
    release = threading.Event()

    def work() -> None:
        with tracker.track("report", submitted_at=submitted):
            started.set()
            release.wait(5)

    time.sleep(0.2)  # the task waits in a queue
    thread = threading.Thread(target=work)
    thread.start()
    started.wait(5)
    assert value(tracker, "tasks_in_progress") == 1
    release.set()
    thread.join()
    assert value(tracker, "tasks_in_progress") == 0
    assert value(tracker, "task_queue_wait_seconds_sum") >= 0.2
    assert value(tracker, "task_queue_wait_seconds_count") == 1


def test_explicit_outcome_overrides_the_inferred_one(tracker: TaskTracker) -> None:
    with tracker.track("report") as run:
        run.outcome = "timeout"
    assert value(tracker, "tasks_completed_total", outcome="timeout") == 1
    assert value(tracker, "task_queue_wait_seconds_count") == 0  # no submitted_at, no wait recorded


def test_decorator_tracks_sync_functions(tracker: TaskTracker) -> None:
    @tracker.tracked("report")
    def build(pages: int) -> int:
        return pages * 2

    assert build(3) == 6
    assert value(tracker, "tasks_submitted_total") == 1
    assert value(tracker, "tasks_completed_total", outcome="success") == 1


@pytest.mark.anyio
async def test_decorator_and_async_context_track_coroutines(tracker: TaskTracker) -> None:
    @tracker.tracked("report")
    async def build() -> str:
        await asyncio.sleep(0.01)
        raise RuntimeError("upstream failed")

    with pytest.raises(RuntimeError):
        await build()
    async with tracker.track("report"):
        await asyncio.sleep(0)
    assert value(tracker, "tasks_completed_total", outcome="failure") == 1
    assert value(tracker, "tasks_completed_total", outcome="success") == 1


@pytest.mark.anyio
async def test_cancelled_coroutine_counts_as_cancelled(tracker: TaskTracker) -> None:
    async def work() -> None:
        async with tracker.track("report"):
            await asyncio.sleep(10)

    task = asyncio.ensure_future(work())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value(tracker, "tasks_completed_total", outcome="cancelled") == 1


def test_unknown_outcome_is_refused(tracker: TaskTracker) -> None:
    with pytest.raises(ValueError, match="outcome must be one of"), tracker.track("report") as run:
        run.outcome = "exploded"
