"""Task metrics for any way of running work: submitted, in progress, completed by outcome, duration, wait.

The same ``TaskTracker`` serves BackgroundTasks, an executor, a process pool or a Celery worker, so
every backend reports the same series with its own ``backend`` label.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast

from asyncproof.monitoring.contract import TASK_OUTCOMES
from asyncproof.monitoring.metrics import Metrics

F = TypeVar("F", bound=Callable[..., Any])


def outcome_of(error: BaseException | None) -> str:
    """The contract's outcome for a task that ended with ``error`` (``None``: it returned)."""
    if error is None:
        return "success"
    if isinstance(error, TimeoutError):  # asyncio.TimeoutError and socket.timeout are this class too
        return "timeout"
    if isinstance(error, Exception):
        return "failure"
    return "cancelled"  # asyncio.CancelledError, KeyboardInterrupt, SystemExit


class TaskRun:
    """One execution being tracked: a sync and an async context manager, made by :meth:`TaskTracker.track`.

    Set ``outcome`` inside the block to record something other than what the way it ended implies
    (say ``"failure"`` for a job that returned an error result); the exception, if any, still propagates.
    """

    def __init__(
        self, tracker: TaskTracker, task: str, submitted_at: float | None, timeout: float | None
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        metrics, labels = tracker.metrics, (task, tracker.backend)
        self.task = task
        self.submitted_at = submitted_at
        self.timeout = timeout
        self._outcome: str | None = None
        self._metrics = metrics
        self._labels = labels
        self._in_progress = metrics.tasks_in_progress.labels(*labels)
        self._started = 0.0
        self._deadline: asyncio.Timeout | None = None

    @property
    def outcome(self) -> str | None:
        """The outcome set explicitly, or ``None`` to infer it from how the block ends."""
        return self._outcome

    @outcome.setter
    def outcome(self, outcome: str | None) -> None:
        if outcome is not None and outcome not in TASK_OUTCOMES:
            raise ValueError(f"outcome must be one of {TASK_OUTCOMES} or None, got {outcome!r}")
        self._outcome = outcome

    def __enter__(self) -> TaskRun:
        if self.submitted_at is not None:
            # Wall clock, not perf_counter: the submit timestamp may come from another process. Clock
            # skew between machines can make it negative.
            wait = max(0.0, time.time() - self.submitted_at)
            self._metrics.task_queue_wait.labels(*self._labels).observe(wait)
        self._in_progress.inc()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        duration = time.perf_counter() - self._started
        self._in_progress.dec()
        self._metrics.task_duration.labels(*self._labels).observe(duration)
        outcome = self._outcome or outcome_of(error)
        if outcome == "success" and self.timeout is not None and duration > self.timeout:
            # A thread cannot be interrupted: work that finished after its deadline is recorded as a
            # timeout (whoever set the deadline has given up on it) but its result is not thrown away.
            outcome = "timeout"
        self._metrics.tasks_completed.labels(*self._labels, outcome).inc()

    async def __aenter__(self) -> TaskRun:
        if self.timeout is not None:
            self._deadline = asyncio.timeout(self.timeout)
            await self._deadline.__aenter__()
        return self.__enter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._deadline is not None:
            try:
                # Turns the cancellation its deadline caused into TimeoutError, which replaces `error`.
                await self._deadline.__aexit__(kind, error, traceback)
            except TimeoutError as expired:
                self.__exit__(TimeoutError, expired, expired.__traceback__)
                raise
        self.__exit__(kind, error, traceback)


class TaskTracker:
    """Records the contract's ``tasks_*``/``task_*`` metrics for one backend (``executor``, ``celery``...).

    ``submitted(task)`` where work is handed over; ``with tracker.track(task, submitted_at=...)`` (or
    ``async with``) around its execution, possibly in another thread or process; or the
    ``@tracker.tracked(task)`` decorator for sync and async functions. Outcomes: ``success``,
    ``failure`` (an exception, re-raised), ``timeout`` (``TimeoutError``, re-raised), ``cancelled``
    (``asyncio.CancelledError`` and other ``BaseException``\\ s, re-raised).
    """

    def __init__(self, metrics: Metrics, backend: str) -> None:
        if not backend:
            raise ValueError("backend must name how tasks run, e.g. 'executor' or 'celery'")
        self.metrics = metrics
        self.backend = backend

    def submitted(self, task: str) -> float:
        """Count a submission; returns a wall-clock timestamp to pass to :meth:`track` as ``submitted_at``.

        A ``time.time()`` value, so it can travel with the task to another process or machine.
        """
        self.metrics.tasks_submitted.labels(task, self.backend).inc()
        return time.time()

    def track(self, task: str, submitted_at: float | None = None, timeout: float | None = None) -> TaskRun:
        """Context manager (sync or async) around one execution of ``task``.

        ``submitted_at`` (from :meth:`submitted`) records the queue wait. ``timeout`` (seconds): under
        ``async with`` the block is cancelled at the deadline and ``TimeoutError`` raised; under ``with``
        nothing can be interrupted, so a block that returns late is recorded as ``timeout``.
        """
        return TaskRun(self, task, submitted_at, timeout)

    def tracked(self, task: str, *, timeout: float | None = None) -> Callable[[F], F]:
        """Decorator for sync and async functions: count a submission and track every call.

        A decorated call runs at once, so no queue wait is recorded; use :meth:`submitted` and
        :meth:`track` where work waits in a queue.
        """

        def decorate(func: F) -> F:
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def run_async(*args: Any, **kwargs: Any) -> Any:
                    self.submitted(task)
                    async with self.track(task, timeout=timeout):
                        return await func(*args, **kwargs)

                return cast(F, run_async)

            @functools.wraps(func)
            def run(*args: Any, **kwargs: Any) -> Any:
                self.submitted(task)
                with self.track(task, timeout=timeout):
                    return func(*args, **kwargs)

            return cast(F, run)

        return decorate


__all__ = ["TaskRun", "TaskTracker", "outcome_of"]
