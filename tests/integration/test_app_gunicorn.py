"""The reference app under Gunicorn with 3 workers, started by `asyncproof serve`, driven like a client."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.processes import BIN, free_port, running, wait_for, wait_for_workers
from tests.services import REDIS_URL, require_port

pytestmark = pytest.mark.integration

WORKERS = 3


@contextmanager
def serve(tmp_path: Path, **settings: str) -> Iterator[tuple[str, int]]:
    """`asyncproof serve` with 3 workers and fresh state; yields (url, master pid)."""
    port = free_port()
    env = {
        "ASYNCPROOF_STATE_DIR": str(tmp_path / "state"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        **{f"ASYNCPROOF_{name.upper()}": value for name, value in settings.items()},
    }
    command = [str(BIN / "asyncproof"), "serve", "--workers", str(WORKERS), "--port", str(port)]
    with running(command, env=env, log=tmp_path / "server.log") as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health/ready", process=process)
        wait_for_workers(process.pid, WORKERS)
        yield url, process.pid


def fresh(method: str, url: str, **kwargs: object) -> httpx.Response:
    """One request on a new connection, as a client behind a load balancer would arrive."""
    with httpx.Client(timeout=10) as client:
        return client.request(method, url, **kwargs)  # type: ignore[arg-type]


def submit_and_poll(url: str, count: int = 30) -> list[tuple[int, int, int]]:
    """Submit ``count`` executor tasks, then poll each several times: (submit pid, poll pid, status)."""
    with ThreadPoolExecutor(12) as pool:
        submissions = list(
            pool.map(
                lambda _: fresh("POST", f"{url}/work/executor", json={"kind": "io", "duration_ms": 50}),
                range(count),
            )
        )
        assert all(r.status_code == 202 for r in submissions), [r.text for r in submissions]
        time.sleep(0.5)
        polls = [(s, f"{url}/tasks/{s.json()['task_id']}") for s in submissions for _ in range(3)]
        # A few requests that stall their worker's loop, so that polls arriving meanwhile are accepted by
        # the other workers whichever worker the kernel would have woken.
        stalls = [
            pool.submit(fresh, "POST", f"{url}/work/async-blocking", json={"kind": "io", "duration_ms": 50})
            for _ in range(4)
        ]
        answers = list(pool.map(lambda pair: (pair[0], fresh("GET", pair[1])), polls))
        assert all(stall.result().status_code == 200 for stall in stalls)
    return [
        (int(s.headers["x-worker-pid"]), int(r.headers["x-worker-pid"]), r.status_code) for s, r in answers
    ]


def test_memory_store_answers_404_to_polls_on_other_workers(tmp_path: Path) -> None:
    with serve(tmp_path, task_store="memory") as (url, _):
        results = submit_and_poll(url)
    other = [status for submitted, polled, status in results if submitted != polled]
    same = [status for submitted, polled, status in results if submitted == polled]
    assert other, "every poll landed on the submitting worker: the test proves nothing"
    assert set(other) == {404}
    assert set(same) <= {200}


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_shared_stores_answer_every_poll(tmp_path: Path, store: str) -> None:
    settings = {"task_store": store}
    if store == "redis":
        require_port("Redis", "127.0.0.1", 6379)
        settings["task_store_url"] = REDIS_URL
    with serve(tmp_path, **settings) as (url, _):
        results = submit_and_poll(url)
        assert any(submitted != polled for submitted, polled, _ in results)
        assert {status for _, _, status in results} == {200}
        # the process pool works under Gunicorn's workers too
        task_id = fresh("POST", f"{url}/work/process", json={"kind": "cpu", "duration_ms": 100}).json()[
            "task_id"
        ]
        deadline = time.monotonic() + 30
        while (task := fresh("GET", f"{url}/tasks/{task_id}").json())["status"] not in {"success", "failed"}:
            assert time.monotonic() < deadline, task
            time.sleep(0.1)
        assert task["status"] == "success", task


def test_maintenance_runs_once_per_interval_across_workers(tmp_path: Path) -> None:
    with serve(tmp_path, maintenance_interval_seconds="1") as (url, _):
        started = time.time()
        time.sleep(4.5)
        pids = {fresh("GET", f"{url}/info").json()["pid"] for _ in range(10)}
    ended = time.time()
    db = sqlite3.connect(tmp_path / "state" / "maintenance.sqlite3")
    rows = db.execute("SELECT slot, pid FROM maintenance_runs WHERE job = 'purge-expired-tasks'").fetchall()
    db.close()
    slots = [slot for slot, _ in rows]
    assert len(slots) == len(set(slots))  # never twice for one interval
    expected = set(range(int(started) + 1, int(ended)))  # the intervals that began while all 3 ran
    assert expected - {0} <= set(slots) | {int(started) + 1}, (sorted(slots), sorted(expected))
    assert len(slots) <= int(ended - started) + 1
    assert pids  # the server answered throughout


def test_sigterm_leaves_no_task_running(tmp_path: Path) -> None:
    # The tasks outlast Gunicorn's graceful timeout: the worker is killed before they could finish.
    with serve(tmp_path, shutdown_task_grace_seconds="1", graceful_timeout="3") as (url, master):
        ids = [
            fresh("POST", f"{url}/work/{style}", json={"kind": "io", "duration_ms": 10_000}).json()["task_id"]
            for style in ("executor", "executor", "process", "background-tasks")
        ]
        with ThreadPoolExecutor(1) as pool:
            # a request in flight when SIGTERM arrives still gets its answer
            in_flight = pool.submit(
                fresh, "POST", f"{url}/work/sync", json={"kind": "io", "duration_ms": 1500}
            )
            time.sleep(0.5)
            os.kill(master, signal.SIGTERM)
            assert in_flight.result().status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(master):
            time.sleep(0.2)
        assert not _alive(master), "Gunicorn did not stop within 30 s of SIGTERM"
    db = sqlite3.connect(tmp_path / "state" / "tasks.sqlite3")

    records = {row[0]: json.loads(row[1]) for row in db.execute("SELECT id, body FROM tasks")}
    db.close()
    assert set(records) == set(ids)
    for record in records.values():
        assert record["status"] == "failed", record
        assert record["reason"] == "interrupted"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie until the test's Popen reaps it
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_serve_under_uvicorn_workers(tmp_path: Path) -> None:
    port = free_port()
    env = {"ASYNCPROOF_STATE_DIR": str(tmp_path / "state")}
    command = [str(BIN / "asyncproof"), "serve", "--server", "uvicorn", "--workers", "2", "--port", str(port)]
    with running(command, env=env, log=tmp_path / "server.log") as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health/ready", process=process)
        response = fresh("POST", f"{url}/work/sync", json={"kind": "io", "duration_ms": 10})
        assert response.status_code == 200
        # the scrape may reach the other worker: it shows the request once the serving worker has
        # flushed (within its flush interval, 0.5 s), so look for about a second
        for _ in range(10):
            if 'http_route="/work/sync"' in fresh("GET", f"{url}/metrics").text:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the /work/sync request is not in /metrics after 2 s")


def test_serve_refuses_bad_settings_with_a_message(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [str(BIN / "asyncproof"), "serve", "--port", "1"],
        env={**os.environ, "ASYNCPROOF_TASK_STORE": "postgres"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ASYNCPROOF_TASK_STORE" in result.stderr


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_tasks_of_a_sigkilled_worker_end_as_worker_lost(tmp_path: Path, store: str) -> None:
    # The task timeout is far away: only the dead owner can end the killed worker's tasks this soon.
    settings = {"task_store": store, "task_reap_interval_seconds": "1", "task_timeout_seconds": "120"}
    if store == "redis":
        require_port("Redis", "127.0.0.1", 6379)
        settings["task_store_url"] = REDIS_URL
    with serve(tmp_path, **settings) as (url, _):
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda style: fresh(
                        "POST", f"{url}/work/{style}", json={"kind": "io", "duration_ms": 4000}
                    ),
                    ["executor", "process", "background-tasks"] * 6,
                )
            )
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
        owners = {a.json()["task_id"]: int(a.headers["x-worker-pid"]) for a in answers}
        victim = max(set(owners.values()), key=list(owners.values()).count)
        time.sleep(0.5)  # running
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        outcome: dict[str, dict[str, object]] = {}
        while len(outcome) < len(owners):
            assert time.monotonic() - killed_at < 20, {i: t["status"] for i, t in outcome.items()}
            for task_id in set(owners) - set(outcome):
                task = fresh("GET", f"{url}/tasks/{task_id}").json()
                if task["status"] in {"success", "failed"}:
                    outcome[task_id] = task | {"seconds": time.monotonic() - killed_at}
            time.sleep(0.2)
    for task_id, pid in owners.items():
        task = outcome[task_id]
        if pid == victim:
            assert (task["status"], task["reason"]) == ("failed", "worker_lost"), task
            assert task["seconds"] < 4, task  # the reaper's interval, not the 4 s the work would take
        else:
            assert task["status"] == "success", task
