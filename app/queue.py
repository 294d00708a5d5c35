"""The queue style: a Celery task through Redis, run by a Celery worker process.

The web side only publishes, from a small thread pool and with a deadline, because publishing blocks
the calling thread while the broker is unreachable: with the broker down ``/work/queue`` answers 503
in about ``broker_timeout_seconds`` instead of hanging, and the event loop never waits. The worker
side acknowledges late and rejects on worker loss, so the task of a worker process killed mid-task is
delivered again. Both sides write the same task store (``sqlite`` or ``redis``; the per-worker
``memory`` store cannot be shared with a worker process).

Run a worker with ``asyncproof worker`` (or ``celery -A app.queue worker``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import SoftTimeLimitExceeded
from prometheus_client import CollectorRegistry

from asyncproof.app.errors import connection_errors
from asyncproof.app.settings import Settings
from asyncproof.app.tasks.lifecycle import gave_up, may_retry, retry_delay, timed_out
from asyncproof.app.tasks.store import TaskStore, open_store_for
from asyncproof.app.work import TASK_NAME, QueueUnavailable, WorkFailed, WorkRequest, run_blocking
from asyncproof.monitoring import Metrics, TaskTracker

TASK = "asyncproof.work"
QUEUE = "asyncproof"
# Times a task whose status cannot be written is handed back to the broker before it fails.
STORE_RETRIES = 8


def make_celery(settings: Settings) -> Celery:
    timeout = settings.broker_timeout_seconds
    celery = Celery("asyncproof", broker=settings.broker_url or "redis://127.0.0.1:6379/0")
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        task_ignore_result=True,  # the task store holds results
        # Acknowledge after the task ran, and hand a task back when its worker process dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_timeout=timeout,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            "socket_connect_timeout": timeout,
            "socket_timeout": timeout,
            "max_retries": 0,
        },
        task_soft_time_limit=settings.task_timeout_seconds,
        task_time_limit=settings.task_timeout_seconds + 5,
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
    )
    return celery


settings = Settings()
celery_app = make_celery(settings)


class Publisher:
    """Publishes from its own threads with a deadline; the event loop only awaits."""

    def __init__(self, celery: Celery, timeout: float) -> None:
        self.celery = celery
        self.timeout = timeout
        self._threads = ThreadPoolExecutor(4, thread_name_prefix="asyncproof-publish")

    def _publish(self, deadline: float, args: list[Any]) -> None:
        if time.monotonic() > deadline:  # waited for a thread past the deadline: the caller gave up
            raise QueueUnavailable("no publisher thread free in time")
        self.celery.send_task(TASK, args=args, queue=QUEUE, retry=False)

    async def publish(self, task_id: str, request: WorkRequest, submitted_at: float) -> None:
        deadline = time.monotonic() + self.timeout
        future = asyncio.get_running_loop().run_in_executor(
            self._threads, self._publish, deadline, [task_id, request.model_dump(), submitted_at]
        )
        try:
            await asyncio.wait_for(future, self.timeout)
        except TimeoutError as error:
            raise QueueUnavailable(f"the broker did not take the task within {self.timeout:g} s") from error
        except QueueUnavailable:
            raise
        except Exception as error:  # kombu's OperationalError, redis' ConnectionError...
            raise QueueUnavailable(f"the broker refused the task: {type(error).__name__}: {error}") from error

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


# -- worker side ------------------------------------------------------------------------------------

_worker: dict[str, Any] = {}
_worker_lock = threading.Lock()


def _metrics() -> Metrics:
    # One per interpreter: pool processes forked later inherit it (prometheus_client notices the new
    # pid and writes that process's own files) and must not register the metrics a second time.
    if "metrics" not in _worker:
        _worker["metrics"] = Metrics()
    metrics: Metrics = _worker["metrics"]
    return metrics


def _worker_state() -> tuple[asyncio.AbstractEventLoop, TaskStore, TaskTracker]:
    """This worker process's event loop, task store and tracker, made on first use."""
    with _worker_lock:
        if "pid" not in _worker or _worker["pid"] != os.getpid():
            loop = asyncio.new_event_loop()
            store = open_store_for(settings)
            _worker.update(pid=os.getpid(), loop=loop, store=store, tracker=TaskTracker(_metrics(), "celery"))
    return _worker["loop"], _worker["store"], _worker["tracker"]


@celery_app.task(name=TASK, bind=True)
def work_task(
    self: Task, task_id: str, request: dict[str, Any], submitted_at: float, store_retries: int = 0
) -> None:
    loop, store, tracker = _worker_state()
    # Celery counts every retry; those for an unwritable status are not attempts of the work.
    attempt = self.request.retries - store_retries + 1
    work = WorkRequest.model_validate(request)

    def update(**changes: Any) -> None:
        loop.run_until_complete(store.update(task_id, **changes))

    try:
        update(status="running", started_at=time.time(), pid=os.getpid(), attempts=attempt)
    except connection_errors() as error:
        # The task store (often the broker's Redis) is down or restarting: the task has not started,
        # so hand it back for later rather than lose it. Not an attempt of the work.
        if store_retries >= STORE_RETRIES:
            raise
        raise self.retry(
            exc=error,
            countdown=min(30.0, 0.5 * 2**store_retries),
            kwargs={"store_retries": store_retries + 1},
            max_retries=self.request.retries + 1,
        ) from error
    try:
        with tracker.track(
            TASK_NAME, submitted_at=submitted_at, timeout=settings.task_timeout_seconds
        ) as run:
            try:
                result = run_blocking(work, attempt)
            except SoftTimeLimitExceeded:
                run.outcome = "timeout"
                raise
    except SoftTimeLimitExceeded:
        update(**timed_out(settings))
        return
    except WorkFailed as error:
        if may_retry(error, attempt, settings):
            update(status="pending", error=str(error))
            tracker.submitted(TASK_NAME)
            countdown = retry_delay(attempt, settings)
            raise self.retry(
                countdown=countdown,
                args=[task_id, request, time.time() + countdown],
                kwargs={"store_retries": store_retries},
                max_retries=self.request.retries + 1,
            ) from error
        update(**gave_up(error))
        return
    update(status="success", result=result, error=None, finished_at=time.time())


@signals.worker_ready.connect
def _serve_worker_metrics(**_: Any) -> None:
    # Pool processes write their metrics to PROMETHEUS_MULTIPROC_DIR (set by `asyncproof worker`);
    # the main process serves their sum, retiring the files of pool processes that died first.
    from asyncproof.monitoring.exposition import Exposition, MetricsServer
    from asyncproof.monitoring.multiprocess import multiprocess_dir, sweep

    path = multiprocess_dir()
    if settings.worker_metrics_port and path:
        exposition = Exposition(CollectorRegistry(), path)
        _worker["metrics_server"] = MetricsServer(
            exposition, "127.0.0.1", settings.worker_metrics_port, before_render=sweep
        )
