from __future__ import annotations

import asyncio
import inspect
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from asyncproof.monitoring.metrics import Metrics
from asyncproof.monitoring.tasks import TaskTracker

LABELS = {"task": "report", "backend": "executor"}


@pytest.fixture
def tracker() -> TaskTracker:
    return TaskTracker(Metrics(CollectorRegistry()), "executor")


def value(tracker: TaskTracker, name: str, **extra: str) -> float:
    return tracker.metrics.registry.get_sample_value(name, {**LABELS, **extra}) or 0.0


def completed(tracker: TaskTracker) -> dict[str, float]:
    """Completions by outcome, only the outcomes that were counted."""
    outcomes = ("success", "failure", "timeout", "cancelled")
    counts = {outcome: value(tracker, "tasks_completed_total", outcome=outcome) for outcome in outcomes}
    return {outcome: count for outcome, count in counts.items() if count}


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "success"),
        (ValueError("bad"), "failure"),
        (TimeoutError(), "timeout"),
        (asyncio.CancelledError(), "cancelled"),
        (KeyboardInterrupt(), "cancelled"),
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
    assert completed(tracker) == {outcome: 1}
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
    assert started.wait(5)
    assert value(tracker, "tasks_in_progress") == 1
    release.set()
    thread.join(5)
    assert value(tracker, "tasks_in_progress") == 0
    assert value(tracker, "task_queue_wait_seconds_sum") >= 0.2
    assert value(tracker, "task_queue_wait_seconds_count") == 1


def test_submit_time_from_a_clock_ahead_records_no_negative_wait(tracker: TaskTracker) -> None:
    with tracker.track("report", submitted_at=time.time() + 60):
        pass
    assert value(tracker, "task_queue_wait_seconds_count") == 1
    assert value(tracker, "task_queue_wait_seconds_sum") == 0


def test_explicit_outcome_overrides_the_inferred_one(tracker: TaskTracker) -> None:
    with tracker.track("report") as run:
        run.outcome = "failure"  # say, the job returned an error result

    def give_up() -> None:
        with tracker.track("report") as run:
            run.outcome = "timeout"
            raise ValueError("upstream gave up")

    with pytest.raises(ValueError, match="upstream"):
        give_up()
    assert completed(tracker) == {"failure": 1, "timeout": 1}
    assert value(tracker, "task_queue_wait_seconds_count") == 0  # no submitted_at, no wait recorded


def test_unknown_outcome_is_refused_where_it_is_set(tracker: TaskTracker) -> None:
    with tracker.track("report") as run, pytest.raises(ValueError, match="outcome must be one of"):
        run.outcome = "exploded"
    assert completed(tracker) == {"success": 1}


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_non_positive_timeout_is_refused(tracker: TaskTracker, timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        tracker.track("report", timeout=timeout)


def test_sync_task_finishing_after_its_timeout_counts_as_timeout_and_keeps_its_result(
    tracker: TaskTracker,
) -> None:
    with tracker.track("report", timeout=0.01):
        time.sleep(0.05)
        result = "done"
    with tracker.track("report", timeout=5):
        pass
    assert result == "done"
    assert completed(tracker) == {"timeout": 1, "success": 1}


def test_decorator_tracks_sync_functions_run_by_an_executor(tracker: TaskTracker) -> None:
    @tracker.tracked("report")
    def build(pages: int) -> int:
        """Build a report."""
        if pages < 0:
            raise ValueError("pages")
        return pages * 2

    assert build.__name__ == "build"
    assert build.__doc__ == "Build a report."
    with ThreadPoolExecutor(max_workers=2) as executor:
        assert list(executor.map(build, [1, 2, 3])) == [2, 4, 6]
        with pytest.raises(ValueError, match="pages"):
            executor.submit(build, -1).result()
    assert value(tracker, "tasks_submitted_total") == 4
    assert completed(tracker) == {"success": 3, "failure": 1}
    assert value(tracker, "task_queue_wait_seconds_count") == 0  # a decorated call does not queue
    assert value(tracker, "tasks_in_progress") == 0


@pytest.mark.anyio
async def test_decorator_tracks_coroutine_functions(tracker: TaskTracker) -> None:
    @tracker.tracked("report")
    async def build(fail: bool) -> str:
        await asyncio.sleep(0.01)
        if fail:
            raise RuntimeError("upstream failed")
        return "ok"

    assert inspect.iscoroutinefunction(build)
    assert await build(False) == "ok"
    with pytest.raises(RuntimeError):
        await build(True)
    assert value(tracker, "tasks_submitted_total") == 2
    assert completed(tracker) == {"success": 1, "failure": 1}
    assert value(tracker, "task_duration_seconds_sum") >= 0.02


@pytest.mark.anyio
async def test_async_context_shows_the_task_in_progress_while_it_runs(tracker: TaskTracker) -> None:
    running = asyncio.Event()
    release = asyncio.Event()
    entered = 0

    async def work() -> None:
        nonlocal entered
        async with tracker.track("report", submitted_at=tracker.submitted("report")):
            entered += 1
            if entered == 2:
                running.set()
            await release.wait()

    tasks = [asyncio.ensure_future(work()) for _ in range(2)]
    await asyncio.wait_for(running.wait(), 5)
    assert value(tracker, "tasks_in_progress") == 2
    release.set()
    await asyncio.gather(*tasks)
    assert value(tracker, "tasks_in_progress") == 0
    assert completed(tracker) == {"success": 2}
    assert value(tracker, "task_queue_wait_seconds_count") == 2


@pytest.mark.anyio
async def test_cancelled_coroutine_counts_as_cancelled(tracker: TaskTracker) -> None:
    async def work() -> None:
        async with tracker.track("report", timeout=10):  # a deadline that is not what cancelled it
            await asyncio.sleep(10)

    task = asyncio.ensure_future(work())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert completed(tracker) == {"cancelled": 1}
    assert value(tracker, "tasks_in_progress") == 0


@pytest.mark.anyio
async def test_async_timeout_cancels_the_block_and_raises_timeout_error(tracker: TaskTracker) -> None:
    reached_end = False

    async def slow() -> None:
        nonlocal reached_end
        async with tracker.track("report", timeout=0.05):
            await asyncio.sleep(5)
            reached_end = True

    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        await slow()
    assert not reached_end
    assert time.perf_counter() - started < 2
    assert completed(tracker) == {"timeout": 1}
    assert value(tracker, "tasks_in_progress") == 0
    assert 0.05 <= value(tracker, "task_duration_seconds_sum") < 2


@pytest.mark.anyio
async def test_async_timeout_not_reached_is_a_success(tracker: TaskTracker) -> None:
    @tracker.tracked("report", timeout=5)
    async def quick() -> int:
        await asyncio.sleep(0)
        return 1

    assert await quick() == 1
    assert completed(tracker) == {"success": 1}
