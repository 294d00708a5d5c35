"""The queue style with a real Celery worker and Redis: results, retries, a killed worker, a dead broker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.app.helpers import app_client, sample, settings_for, wait_terminal
from tests.processes import BIN, free_port, running, scrape

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

BROKER_DB = 14  # a Redis database of its own, emptied before each test


@pytest.fixture
def broker_url(redis_url: str) -> str:
    url = redis_url.rsplit("/", 1)[0] + f"/{BROKER_DB}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def worker(tmp_path: Path, broker_url: str) -> Iterator[dict[str, str]]:
    """A Celery worker (2 pool processes) sharing the app's SQLite task store; yields its settings."""
    metrics_port = free_port()
    env = {
        "ASYNCPROOF_BROKER_URL": broker_url,
        "ASYNCPROOF_STATE_DIR": str(tmp_path / "state"),
        "ASYNCPROOF_WORKER_METRICS_PORT": str(metrics_port),
        "ASYNCPROOF_TASK_RETRY_BACKOFF_SECONDS": "0.2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "worker-metrics"),
    }
    (tmp_path / "worker-metrics").mkdir()
    with running(
        [str(BIN / "asyncproof"), "worker", "--concurrency", "2"], env=env, log=tmp_path / "worker.log"
    ):
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise TimeoutError((tmp_path / "worker.log").read_text()) from None
                time.sleep(0.2)
        yield {"metrics_url": f"http://127.0.0.1:{metrics_port}", "broker_url": broker_url}


async def test_queued_task_runs_in_the_worker(tmp_path: Path, worker: dict[str, str]) -> None:
    settings = settings_for(tmp_path / "state", broker_url=worker["broker_url"])
    async with app_client(settings) as (client, app):
        started = time.perf_counter()
        response = await client.post("/work/queue", json={"kind": "cpu", "duration_ms": 200})
        assert response.status_code == 202, response.text
        assert time.perf_counter() - started < 1
        task = await wait_terminal(client, response.json()["task_id"], timeout=30)
        assert task["status"] == "success"
        assert task["style"] == "queue"
        assert task["pid"] != os.getpid()
        assert task["result"]["pid"] == task["pid"]
        assert sample(app, "tasks_submitted_total", task="work", backend="celery") == 1
        retried = (
            await client.post("/work/queue", json={"kind": "io", "duration_ms": 10, "fail": "once"})
        ).json()
        task = await wait_terminal(client, retried["task_id"], timeout=30)
        assert task["status"] == "success"
        assert task["attempts"] == 2
    samples = scrape(worker["metrics_url"])
    completed = {
        dict(labels)["outcome"]: value
        for (name, labels), value in samples.items()
        if name == "tasks_completed_total"
    }
    assert completed == {"success": 2, "failure": 1}


async def test_task_of_a_killed_worker_process_is_delivered_again(
    tmp_path: Path, worker: dict[str, str]
) -> None:
    settings = settings_for(tmp_path / "state", broker_url=worker["broker_url"])
    async with app_client(settings) as (client, _):
        task_id = (await client.post("/work/queue", json={"kind": "io", "duration_ms": 3000})).json()[
            "task_id"
        ]
        deadline = time.monotonic() + 30
        while (running_task := (await client.get(f"/tasks/{task_id}")).json())["status"] != "running":
            assert time.monotonic() < deadline, running_task
            await asyncio.sleep(0.05)
        os.kill(running_task["pid"], signal.SIGKILL)
        task = await wait_terminal(client, task_id, timeout=60)
        assert task["status"] == "success", task
        assert task["pid"] != running_task["pid"]  # another pool process ran it again


@pytest.mark.parametrize("broker", ["refusing", "silent"])
async def test_broker_down_answers_503_in_bounded_time(tmp_path: Path, broker: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if broker == "silent":  # accepts connections (the kernel does) and never answers
            listener.listen(100)
        else:
            listener.close()
        settings = settings_for(
            tmp_path, broker_url=f"redis://127.0.0.1:{port}/0", broker_timeout_seconds=1.0
        )
        async with app_client(settings) as (client, app):

            async def probe_liveness() -> list[float]:
                timings = []
                for _ in range(10):
                    started = time.perf_counter()
                    assert (await client.get("/health/live")).status_code == 200
                    timings.append(time.perf_counter() - started)
                    await asyncio.sleep(0.1)
                return timings

            async def submit() -> tuple[httpx.Response, float]:
                started = time.perf_counter()
                response = await client.post("/work/queue", json={"kind": "io", "duration_ms": 10})
                return response, time.perf_counter() - started

            submissions, probes = await asyncio.gather(
                asyncio.gather(*(submit() for _ in range(6))), probe_liveness()
            )
            for response, seconds in submissions:
                assert response.status_code == 503, response.text
                assert "task queue unavailable" in response.json()["detail"]
                assert response.headers["retry-after"] == "5"
                assert seconds < 2.5
            assert max(probes) < 0.2  # the event loop never waited on the broker
            assert sample(app, "tasks_submitted_total", task="work", backend="celery") == 0
            readiness = await client.get("/health/ready")
            assert readiness.status_code == 503  # the broker check fails


async def test_queue_needs_a_broker_and_a_shared_store(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        response = await client.post("/work/queue", json={"kind": "io", "duration_ms": 10})
        assert response.status_code == 503
        assert "ASYNCPROOF_BROKER_URL" in response.json()["detail"]
    settings = settings_for(tmp_path, broker_url="redis://127.0.0.1:1/0", task_store="memory")
    async with app_client(settings) as (client, _):
        response = await client.post("/work/queue", json={"kind": "io", "duration_ms": 10})
        assert response.status_code == 503
        assert "ASYNCPROOF_TASK_STORE" in response.json()["detail"]


async def test_tasks_accepted_as_redis_comes_back_are_run_not_lost(tmp_path: Path) -> None:
    # One Redis of the test's own is broker and task store, as in the compose stack; it restarts
    # (empty, as a Redis without persistence does) while the worker and the app keep running.
    from tests.integration.test_outages import start_redis
    from tests.processes import stop

    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    shared = {"broker_url": f"{url}/3", "task_store": "redis", "task_store_url": f"{url}/2"}
    env = {f"ASYNCPROOF_{name.upper()}": value for name, value in shared.items()}
    env |= {"ASYNCPROOF_STATE_DIR": str(tmp_path / "state"), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")}
    (tmp_path / "m").mkdir()
    log = tmp_path / "redis.log"
    server = start_redis(port, log)
    try:
        with running(
            [str(BIN / "asyncproof"), "worker", "--concurrency", "2"], env=env, log=tmp_path / "w.log"
        ):
            settings = settings_for(tmp_path / "state", broker_timeout_seconds=1, **shared)
            async with app_client(settings) as (client, _):
                work = {"kind": "io", "duration_ms": 50}
                before = (await client.post("/work/queue", json=work)).json()["task_id"]
                assert (await wait_terminal(client, before, timeout=60))["status"] == "success"
                stop(server)
                await asyncio.sleep(1)
                server = start_redis(port, log)
                accepted: list[str] = []
                deadline = time.monotonic() + 4
                while time.monotonic() < deadline:  # submissions while the connections recover
                    response = await client.post("/work/queue", json=work)
                    assert response.status_code in {202, 503}, response.text
                    if response.status_code == 202:
                        accepted.append(response.json()["task_id"])
                    await asyncio.sleep(0.1)
                assert accepted, "nothing was accepted after Redis came back"
                for task_id in accepted:
                    task = await wait_terminal(client, task_id, timeout=60)
                    assert task["status"] == "success", task
                    assert task["attempts"] == 1, task
    finally:
        stop(server)
