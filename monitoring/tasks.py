"""Task metrics for any way of running work: submitted, in progress, completed by outcome, duration, wait.

The same ``TaskTracker`` serves BackgroundTasks, an executor, a process pool or a Celery worker, so
every backend reports the same series with its own ``backend`` label.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from monitoring.contract import TASK_OUTCOMES
from monitoring.metrics import Metrics

P = ParamSpec("P")
R = TypeVar("R")


def outcome_of(error: BaseException | None) -> str:
    """The contract's outcome for a task that ended with ``error`` (``None``: it returned)."""
    if error is None:
        return "success"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, Exception):
        return "failure"
    return "cancelled"  # asyncio.CancelledError, KeyboardInterrupt, SystemExit


class TaskRun:
    """One execution being tracked; a sync and an async context manager. Set ``outcome`` to override."""

    def __init__(self, tracker: TaskTracker, task: str, submitted_at: float | None) -> None:
        self.tracker = tracker
        self.task = task
        self.submitted_at = submitted_at
        self.outcome: str | None = None
        self._started = 0.0

    def __enter__(self) -> TaskRun:
        metrics, labels = self.tracker.metrics, (self.task, self.tracker.backend)
        if self.submitted_at is not None:
            metrics.task_queue_wait.labels(*labels).observe(max(0.0, time.time() - self.submitted_at))
        metrics.tasks_in_progress.labels(*labels).inc()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        metrics, labels = self.tracker.metrics, (self.task, self.tracker.backend)
        metrics.task_duration.labels(*labels).observe(time.perf_counter() - self._started)
        metrics.tasks_in_progress.labels(*labels).dec()
        outcome = self.outcome or outcome_of(error)
        if outcome not in TASK_OUTCOMES:
            raise ValueError(f"outcome must be one of {TASK_OUTCOMES}, got {outcome!r}")
        metrics.tasks_completed.labels(*labels, outcome).inc()

    async def __aenter__(self) -> TaskRun:
        return self.__enter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.__exit__(kind, error, traceback)


class TaskTracker:
    """Records the contract's ``tasks_*``/``task_*`` metrics for one backend (``executor``, ``celery``...).

    ``submitted(task)`` where work is handed over; ``with tracker.track(task, submitted_at=...)`` (or
    ``async with``) around its execution, possibly in another thread or process; or the
    ``@tracker.tracked(task)`` decorator for sync and async functions. Outcomes: ``success``,
    ``failure`` (an exception, re-raised), ``timeout`` (``TimeoutError``), ``cancelled``
    (``asyncio.CancelledError`` and other ``BaseException``\\ s).
    """

    def __init__(self, metrics: Metrics, backend: str) -> None:
        if not backend:
            raise ValueError("backend must name how tasks run, e.g. 'executor' or 'celery'")
        self.metrics = metrics
        self.backend = backend

    def submitted(self, task: str) -> float:
        """Count a submission; returns a wall-clock timestamp to pass to :meth:`track` as ``submitted_at``."""
        self.metrics.tasks_submitted.labels(task, self.backend).inc()
        return time.time()

    def track(self, task: str, submitted_at: float | None = None) -> TaskRun:
        """Context manager (sync or async) around one execution of ``task``."""
        return TaskRun(self, task, submitted_at)

    def tracked(self, task: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator: count a submission and track the execution of every call."""

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(func):
                afunc: Callable[P, Awaitable[Any]] = func

                @functools.wraps(func)
                async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                    async with self.track(task, self.submitted(task)):
                        return await afunc(*args, **kwargs)

                return run_async  # type: ignore[return-value]

            @functools.wraps(func)
            def run(*args: P.args, **kwargs: P.kwargs) -> R:
                with self.track(task, self.submitted(task)):
                    return func(*args, **kwargs)

            return run

        return decorate


__all__ = ["TaskRun", "TaskTracker", "outcome_of"]
