"""The reaper's policy: when an unfinished task is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from asyncproof.app.settings import Settings
from asyncproof.app.tasks.lifecycle import HOST, deadline, lost_policy, owner_of_this_worker
from asyncproof.app.tasks.store import TaskRecord

SETTINGS = Settings(task_timeout_seconds=10, task_lost_grace_seconds=5, task_max_retries=2)


def task(style: str = "executor", age: float = 0.0, status: str = "running", **fields: object) -> TaskRecord:
    created = time.time() - age
    return TaskRecord(id=uuid.uuid4().hex, style=style, status=status, created_at=created, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not psutil.pid_exists(child.pid)
    return child.pid


def test_a_task_of_a_live_worker_within_its_deadline_is_not_lost() -> None:
    assert lost_policy(SETTINGS)(task(owner=owner_of_this_worker())) is None


def test_a_task_whose_worker_is_gone_is_lost_at_once(dead_pid: int) -> None:
    reason = lost_policy(SETTINGS)(task(owner=f"{HOST}:{dead_pid}"))
    assert reason is not None
    assert f"pid {dead_pid}" in reason


def test_a_pid_reused_by_a_younger_process_does_not_keep_the_task_alive() -> None:
    # This process started after the task was created: it cannot be the worker that ran it.
    started = psutil.Process(os.getpid()).create_time()
    record = task(owner=owner_of_this_worker())
    record = record.model_copy(update={"created_at": started - 60})
    assert lost_policy(SETTINGS)(record) is not None


def test_another_hosts_worker_is_judged_by_the_deadline_only(dead_pid: int) -> None:
    policy = lost_policy(SETTINGS)
    assert policy(task(owner=f"elsewhere:{dead_pid}", age=14)) is None
    assert policy(task(owner=f"elsewhere:{dead_pid}", age=16)) is not None  # 10 s timeout + 5 s grace


def test_queue_tasks_get_every_attempt_before_they_are_lost() -> None:
    policy = lost_policy(SETTINGS)
    queued = task(style="queue", status="pending")
    # 3 attempts of 10 s, 0.2 + 0.4 s of backoff, 5 s of grace
    assert deadline(queued, SETTINGS) - queued.created_at == pytest.approx(35.6)
    assert policy(task(style="queue", age=30)) is None
    assert policy(task(style="queue", age=36)) is not None


def test_finished_tasks_are_never_lost(dead_pid: int) -> None:
    done = task(owner=f"{HOST}:{dead_pid}", age=1000).model_copy(update={"status": "success"})
    assert lost_policy(SETTINGS)(done) is None
