"""A task's life in one place: when a failed attempt is tried again and after how long, what a
terminal failure records, and when an unfinished task is lost (the policy the reaper applies).

Every style uses it — the in-process runner (:mod:`asyncproof.app.tasks.runner`) and the Celery task
(:mod:`asyncproof.app.queue`) — so a reason or a backoff cannot differ between them.

A task is normally ended by the worker that runs it: success, failure, its own timeout, or
``interrupted`` when the worker drains. A worker that is SIGKILLed (Gunicorn's timeout, the OOM
killer) or lost with its node ends nothing, and its tasks would stay ``running`` for ever. Two rules
end them, whichever comes first:

- **owner gone**: an in-process task records the web worker that runs it (``owner``, host and pid).
  On the same host, a pid that no longer exists, or that belongs to a process started after the task
  was created (the pid was reused), means the task cannot finish: it is lost at once.
- **deadline passed**: no task may stay unfinished longer than its style allows — the task timeout
  (which bounds the whole submission, retries included) plus ``task_lost_grace_seconds`` for an
  in-process task; every attempt's timeout plus the grace for a queue task, whose Celery worker may
  also redeliver it (a task the reaper ended and Celery then runs again records its real outcome).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import psutil

from asyncproof.app.settings import Settings
from asyncproof.app.tasks.store import TERMINAL, LostPolicy, TaskRecord
from asyncproof.app.work import WorkFailed

HOST = socket.gethostname()


def may_retry(error: WorkFailed, attempt: int, settings: Settings) -> bool:
    """Whether a failed ``attempt`` (1 for the first) is followed by another."""
    return error.retryable and attempt <= settings.task_max_retries


def retry_delay(attempt: int, settings: Settings) -> float:
    """Seconds between a failed ``attempt`` and the next one: exponential backoff."""
    return float(settings.task_retry_backoff_seconds * 2 ** (attempt - 1))


def failed(reason: str, error: str) -> dict[str, Any]:
    """The changes that end a task as failed."""
    return {"status": "failed", "reason": reason, "error": error, "finished_at": time.time()}


def timed_out(settings: Settings) -> dict[str, Any]:
    return failed("timeout", f"not finished within {settings.task_timeout_seconds:g} s")


def gave_up(error: WorkFailed) -> dict[str, Any]:
    """A failure that is not tried again: retries exhausted, or not retryable at all."""
    return failed("retries exhausted" if error.retryable else "error", str(error))


def interrupted() -> dict[str, Any]:
    return failed("interrupted", "the worker shut down before the task finished")


def owner_of_this_worker() -> str:
    return f"{HOST}:{os.getpid()}"


def _gone(owner: str, created_at: float) -> bool:
    """Whether ``owner`` ("host:pid") is a process of this host that cannot be running the task."""
    host, _, pid = owner.rpartition(":")
    if host != HOST or not pid.isdigit():
        return False  # another machine's worker: only the deadline can tell
    try:
        process = psutil.Process(int(pid))
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        # A process younger than the task is another one that got the same pid.
        return process.create_time() > created_at + 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # cannot be read (permissions): assume alive, the deadline still applies
        return False


def deadline(record: TaskRecord, settings: Settings) -> float:
    """When ``record`` is lost at the latest if it has not ended."""
    timeout = settings.task_timeout_seconds
    if record.style == "queue":
        backoff = sum(retry_delay(attempt, settings) for attempt in range(1, settings.task_max_retries + 1))
        timeout = timeout * (settings.task_max_retries + 1) + backoff
    return record.created_at + timeout + settings.task_lost_grace_seconds


def lost_policy(settings: Settings) -> LostPolicy:
    """The reaper's verdict on one record: why it is lost, or ``None`` while it may still end."""

    def lost(record: TaskRecord) -> str | None:
        if record.status in TERMINAL:
            return None
        if record.owner and _gone(record.owner, record.created_at):
            pid = record.owner.rpartition(":")[2]
            return f"the worker that ran it (pid {pid}) is gone (killed, or out of memory)"
        if time.time() > deadline(record, settings):
            waited = deadline(record, settings) - record.created_at
            return f"no worker ended it within {waited:g} s of its submission"
        return None

    return lost
