"""Runs submitted work in-process: FastAPI BackgroundTasks, a bounded thread pool, or a process pool.

Each submission gets a record in the task store (pending → running → success/failed). A failure
marked retryable is tried again after an exponential backoff; the task timeout bounds the whole
submission; at shutdown tasks that cannot finish in time are marked failed with reason
``interrupted`` rather than left ``running`` for ever. Every attempt is recorded with
:class:`monitoring.TaskTracker`, with the style as the ``backend`` label.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import anyio.to_thread

from asyncproof.app.settings import Settings
from asyncproof.app.tasks.lifecycle import (
    failed,
    gave_up,
    interrupted,
    may_retry,
    owner_of_this_worker,
    retry_delay,
    timed_out,
)
from asyncproof.app.tasks.store import TaskRecord, TaskStore
from asyncproof.app.work import TASK_NAME, WorkFailed, WorkRequest, run_blocking
from asyncproof.monitoring import Metrics, TaskTracker, watch_executor

log = logging.getLogger("asyncproof.tasks")

IN_PROCESS_STYLES = ("background", "executor", "process")


def _set_started(future: asyncio.Future[tuple[float, int]], value: tuple[float, int]) -> None:
    if not future.done():
        future.set_result(value)


class TaskRunner:
    def __init__(self, store: TaskStore, metrics: Metrics, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.trackers = {style: TaskTracker(metrics, style) for style in IN_PROCESS_STYLES}
        self.threads = ThreadPoolExecutor(settings.executor_threads, thread_name_prefix="asyncproof-work")
        # executor_pending_work_items / executor_busy_workers / executor_max_workers, labelled like
        # the tasks' backend
        watch_executor(self.threads, "executor", metrics)
        self._processes: ProcessPoolExecutor | None = None
        # Tasks of this worker that have not reached a terminal state.
        self.active: dict[str, asyncio.Task[None]] = {}

    @property
    def processes(self) -> ProcessPoolExecutor:
        if self._processes is None:
            # spawn, not fork: forking a process that runs an event loop and threads copies their
            # locks in whatever state they are in.
            self._processes = ProcessPoolExecutor(
                self.settings.process_pool_workers, mp_context=multiprocessing.get_context("spawn")
            )
            watch_executor(self._processes, "process", self.metrics)
        return self._processes

    async def create(self, style: str) -> TaskRecord:
        # An in-process task is this worker's to end; the reaper ends it if this worker dies.
        owner = owner_of_this_worker() if style in IN_PROCESS_STYLES else None
        record = TaskRecord(id=uuid.uuid4().hex, style=style, created_at=time.time(), owner=owner)
        await self.store.create(record)
        return record

    async def submit(self, style: str, request: WorkRequest) -> TaskRecord:
        """Create the record and start the work in the background of this worker."""
        record = await self.create(style)
        task = asyncio.create_task(self.execute(record.id, style, request), name=f"task-{record.id}")
        self.active[record.id] = task
        task.add_done_callback(lambda _: self.active.pop(record.id, None))
        return record

    async def execute(self, task_id: str, style: str, request: WorkRequest) -> None:
        """Run ``request`` to a terminal state in the store, with retries and the task timeout."""
        current = asyncio.current_task()
        if current is not None:
            self.active.setdefault(task_id, current)
        # The task's deadline, for the awaiting side (asyncio.timeout) and for the work itself
        stop_at = time.monotonic() + self.settings.task_timeout_seconds
        try:
            async with asyncio.timeout(self.settings.task_timeout_seconds):
                result, attempt = await self._with_retries(task_id, style, request, stop_at)
        except TimeoutError:
            await self.store.update(task_id, **timed_out(self.settings))
        except WorkFailed as error:
            await self.store.update(task_id, **gave_up(error))
        except asyncio.CancelledError:
            await asyncio.shield(self.interrupt(task_id))
            raise
        except Exception as error:  # a broken process pool, an unpicklable result...
            log.exception("task %s failed", task_id)
            await self.store.update(task_id, **failed("error", f"{type(error).__name__}: {error}"))
        else:
            await self.store.update(
                task_id,
                status="success",
                result=result,
                error=None,
                attempts=attempt,
                finished_at=time.time(),
            )
        finally:
            self.active.pop(task_id, None)

    async def _with_retries(
        self, task_id: str, style: str, request: WorkRequest, stop_at: float
    ) -> tuple[dict[str, Any], int]:
        attempt = 1
        while True:
            try:
                return await self._attempt(task_id, style, request, attempt, stop_at), attempt
            except WorkFailed as error:
                if not may_retry(error, attempt, self.settings):
                    await self.store.update(task_id, attempts=attempt)
                    raise
                await self.store.update(task_id, status="pending", error=str(error), attempts=attempt)
                await asyncio.sleep(retry_delay(attempt, self.settings))
                attempt += 1

    async def _attempt(
        self, task_id: str, style: str, request: WorkRequest, attempt: int, stop_at: float
    ) -> dict[str, Any]:
        tracker = self.trackers[style]
        submitted_at = tracker.submitted(TASK_NAME)
        if style == "process":
            # The child cannot report back when it starts; the record turns running on submission.
            await self.store.update(task_id, status="running", started_at=time.time(), attempts=attempt)
            async with tracker.track(TASK_NAME, submitted_at=submitted_at) as run:
                try:
                    result: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(
                        self.processes, run_blocking, request, attempt, stop_at
                    )
                except asyncio.CancelledError:
                    if time.monotonic() >= stop_at:  # the task timeout, not a shutdown
                        run.outcome = "timeout"
                    raise
            await self.store.update(task_id, pid=result["pid"])
            return result

        loop = asyncio.get_running_loop()
        started: asyncio.Future[tuple[float, int]] = loop.create_future()
        timeout = self.settings.task_timeout_seconds

        def work() -> dict[str, Any]:
            loop.call_soon_threadsafe(_set_started, started, (time.time(), os.getpid()))
            with tracker.track(TASK_NAME, submitted_at=submitted_at, timeout=timeout):
                return run_blocking(request, attempt, stop_at)

        if style == "executor":
            future: asyncio.Future[dict[str, Any]] = loop.run_in_executor(self.threads, work)
        else:  # background: the AnyIO threadpool, where Starlette runs a sync background function
            future = asyncio.ensure_future(anyio.to_thread.run_sync(work, abandon_on_cancel=True))
        try:
            await asyncio.wait([started, future], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
            if started.done():
                started_at, pid = started.result()
                await self.store.update(
                    task_id, status="running", started_at=started_at, pid=pid, attempts=attempt
                )
            return await future
        finally:
            future.cancel()

    async def interrupt(self, task_id: str) -> None:
        await self.store.update(task_id, **interrupted())

    async def shutdown(self, grace: float) -> int:
        """Give unfinished tasks ``grace`` seconds, then mark the rest interrupted; returns how many.

        Safe to call twice (on drain and at lifespan shutdown): the second call finds nothing left.
        """
        pending = [task for task in self.active.values() if task is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        left = [
            task for task in self.active.values() if not task.done() and task is not asyncio.current_task()
        ]
        for task in left:
            task.cancel()  # execute() marks it interrupted
        if left:
            await asyncio.wait(left, timeout=5)
        self.threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=False, cancel_futures=True)
        return len(left)
