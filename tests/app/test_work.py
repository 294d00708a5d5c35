"""The work endpoints and the task lifecycle, in-process (ASGITransport) on embedded defaults."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.app.helpers import app_client, sample, settings_for, wait_terminal

pytestmark = pytest.mark.anyio

IO = {"kind": "io", "duration_ms": 20}
SYNC_STYLES = ["/work/async-blocking", "/work/sync", "/work/async"]
TASK_STYLES = ["/work/executor", "/work/process", "/work/background-tasks"]


@pytest.mark.parametrize("path", SYNC_STYLES)
async def test_inline_styles_do_the_work_and_name_the_worker(tmp_path: Path, path: str) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        started = time.perf_counter()
        response = await client.post(path, json=IO)
        assert response.status_code == 200, response.text
        assert time.perf_counter() - started >= 0.02
        body = response.json()
        assert body["kind"] == "io"
        assert body["duration_ms"] == 20
        assert body["elapsed_ms"] >= 20
        assert response.headers["x-worker-pid"] == str(os.getpid())
        assert response.headers["x-request-id"]


@pytest.mark.parametrize("path", SYNC_STYLES + TASK_STYLES)
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "disk", "duration_ms": 10}, "kind"),
        ({"kind": "io", "duration_ms": -1}, "duration_ms"),
        ({"kind": "io", "duration_ms": 60_001}, "duration_ms"),
        ({"kind": "io", "duration_ms": "soon"}, "duration_ms"),
        ({"kind": "io", "duration_ms": False}, "duration_ms"),
        ({"kind": "io", "duration_ms": "10"}, "duration_ms"),
        ({"kind": "io", "duration_ms": 10.5}, "duration_ms"),
        ({"kind": "io"}, "duration_ms"),
        ({"kind": "io", "duration_ms": 10, "colour": "red"}, "colour"),
        ({"kind": "io", "duration_ms": 10, "fail": "sometimes"}, "fail"),
    ],
)
async def test_bad_work_bodies_get_422_naming_the_field(
    tmp_path: Path, path: str, body: dict, field: str
) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        response = await client.post(path, json=body)
        assert response.status_code == 422
        assert any(error["loc"][-1] == field for error in response.json()["detail"])
        assert response.headers["x-worker-pid"] == str(os.getpid())


async def test_not_json_is_422(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        response = await client.post(
            "/work/sync", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert response.json()["detail"]


async def test_async_refuses_cpu_work_and_says_why(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        response = await client.post("/work/async", json={"kind": "cpu", "duration_ms": 10})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "kind"]
        assert "blocking the event loop" in error["msg"]
        assert "/work/process" in error["msg"]


@pytest.mark.parametrize("path", SYNC_STYLES)
async def test_fail_is_refused_where_nothing_retries(tmp_path: Path, path: str) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        response = await client.post(path, json={**IO, "fail": "once"})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "fail"]
        assert "task styles" in error["msg"]


async def test_the_trap_is_labelled_in_openapi(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        schema = (await client.get("/openapi.json")).json()
        operation = schema["paths"]["/work/async-blocking"]["post"]
        assert "TRAP" in operation["summary"]
        assert "Do not copy" in operation["description"]


@pytest.mark.parametrize("path", TASK_STYLES)
@pytest.mark.parametrize("kind", ["io", "cpu"])
async def test_task_styles_accept_at_once_and_finish(tmp_path: Path, path: str, kind: str) -> None:
    async with app_client(settings_for(tmp_path)) as (client, app):
        started = time.perf_counter()
        response = await client.post(path, json={"kind": kind, "duration_ms": 300})
        assert response.status_code == 202, response.text
        if path != "/work/background-tasks":  # BackgroundTasks run before the ASGI call returns
            assert time.perf_counter() - started < 0.3
        accepted = response.json()
        assert accepted["status"] == "pending"
        assert response.headers["location"] == accepted["status_url"] == f"/tasks/{accepted['task_id']}"
        task = await wait_terminal(client, accepted["task_id"])
        assert task["status"] == "success", task
        assert task["result"]["kind"] == kind
        assert task["result"]["elapsed_ms"] >= 300
        assert task["created_at"] <= task["started_at"] <= task["finished_at"]
        assert task["attempts"] == 1
        assert task["error"] is None
        assert task["reason"] is None
        style = path.removeprefix("/work/").removesuffix("-tasks")
        assert task["style"] == style
        if style == "process":
            assert task["pid"] != os.getpid()  # a process-pool child ran it
        else:
            assert task["pid"] == os.getpid()
        labels = {"task": "work", "backend": style}
        assert sample(app, "tasks_submitted_total", **labels) == 1
        assert sample(app, "tasks_completed_total", **labels, outcome="success") == 1
        assert sample(app, "task_duration_seconds_count", **labels) == 1
        assert sample(app, "tasks_in_progress", **labels) == 0


@pytest.mark.parametrize("path", TASK_STYLES)
async def test_retryable_failure_is_retried_with_backoff(tmp_path: Path, path: str) -> None:
    settings = settings_for(tmp_path, task_retry_backoff_seconds=0.2, task_max_retries=2)
    async with app_client(settings) as (client, app):
        task_id = (await client.post(path, json={**IO, "fail": "once"})).json()["task_id"]
        task = await wait_terminal(client, task_id)
        assert task["status"] == "success"
        assert task["attempts"] == 2
        # the second attempt started at least one backoff after the task was created
        assert task["started_at"] >= task["created_at"]
        style = task["style"]
        assert sample(app, "tasks_completed_total", task="work", backend=style, outcome="failure") == 1
        assert sample(app, "tasks_completed_total", task="work", backend=style, outcome="success") == 1


async def test_retries_run_out(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, task_retry_backoff_seconds=0.05, task_max_retries=2)
    async with app_client(settings) as (client, _):
        task_id = (await client.post("/work/executor", json={**IO, "fail": "always"})).json()["task_id"]
        task = await wait_terminal(client, task_id)
        assert task["status"] == "failed"
        assert task["reason"] == "retries exhausted"
        assert task["attempts"] == 3
        assert "attempt 3" in task["error"]


async def test_fatal_failure_is_not_retried(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path, task_max_retries=3)) as (client, _):
        task_id = (await client.post("/work/process", json={**IO, "fail": "fatal"})).json()["task_id"]
        task = await wait_terminal(client, task_id)
        assert task["status"] == "failed"
        assert task["reason"] == "error"
        assert task["attempts"] == 1
        assert "fatal" in task["error"]


@pytest.mark.parametrize("path", TASK_STYLES)
async def test_task_timeout(tmp_path: Path, path: str) -> None:
    async with app_client(settings_for(tmp_path, task_timeout_seconds=0.3)) as (client, app):
        task_id = (await client.post(path, json={"kind": "io", "duration_ms": 1500})).json()["task_id"]
        task = await wait_terminal(client, task_id, timeout=5)
        assert task["status"] == "failed"
        assert task["reason"] == "timeout"
        assert task["finished_at"] is not None
        await asyncio.sleep(1.5)  # the thread (or child) runs on; it is still recorded as a timeout
        assert (
            sample(app, "tasks_completed_total", task="work", backend=task["style"], outcome="timeout") == 1
        )


@pytest.mark.parametrize("path", ["/work/executor", "/work/process"])
async def test_timed_out_work_frees_its_thread_or_child(tmp_path: Path, path: str) -> None:
    # One thread, one child: were the timed-out work to run on (3 s), the next task would wait for it.
    settings = settings_for(tmp_path, task_timeout_seconds=1.0, executor_threads=1, process_pool_workers=1)
    async with app_client(settings) as (client, _):
        slow = (await client.post(path, json={"kind": "cpu", "duration_ms": 3000})).json()["task_id"]
        assert (await wait_terminal(client, slow, timeout=5))["reason"] == "timeout"
        quick = (await client.post(path, json=IO)).json()["task_id"]
        task = await wait_terminal(client, quick, timeout=5)
        assert task["status"] == "success"
        first = (await client.get(f"/tasks/{slow}")).json()
        # started well before the slow work would have ended (its submission + 3 s)
        waited = datetime.fromisoformat(task["started_at"]) - datetime.fromisoformat(first["created_at"])
        assert waited.total_seconds() < 2.5


async def test_unknown_task_is_404_json(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        response = await client.get("/tasks/0123456789abcdef")
        assert response.status_code == 404
        assert "not found" in response.json()["detail"]
        response = await client.get("/tasks/not%20an%20id")
        assert response.status_code == 422
