"""Dependencies stopped for a few seconds under load, with the reference app under Gunicorn: Redis —
the cache, the task store and the broker at once — and PostgreSQL. No 500 at any time, 503s with a
Retry-After while one is down (reads served from the database throughout a cache outage), and the
service back within 5 s of the dependency."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from tests.databases import empty_database_sync, run_admin_sql
from tests.integration.test_app_gunicorn import serve
from tests.processes import free_port, stop
from tests.services import unavailable

pytestmark = pytest.mark.integration

DOWN_SECONDS = 3.0
BACK_WITHIN = 5.0


def start_redis(port: int, log: Path) -> subprocess.Popen[bytes]:
    """A Redis of the test's own on ``port`` (the shared one must not be stopped)."""
    binary = shutil.which("redis-server") or unavailable("redis-server", "install Debian's redis-server")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with open(log, "ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port, socket_connect_timeout=0.2).ping()
            return process
        except redis.exceptions.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                raise AssertionError("redis-server did not start") from None
            time.sleep(0.05)


class Load:
    """Clients that each repeat one request until ``done`` is set; ``outcomes`` holds (seconds since
    the start, request name, status, Retry-After) of every answer."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[float, str, int, str]] = []
        self.done = threading.Event()
        self.started = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.started

    def client(self, base: str, name: str, method: str, path: str, body: dict[str, object] | None) -> None:
        with httpx.Client(base_url=base, timeout=15) as http:
            while not self.done.is_set():
                response = http.request(method, path, json=body)
                retry_after = response.headers.get("retry-after", "")
                self.outcomes.append((self.now(), name, response.status_code, retry_after))
                time.sleep(0.05)


def test_a_redis_outage_under_load_answers_503s_and_no_500(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    settings = {
        "redis_url": f"{url}/1",  # the cache
        "task_store": "redis",
        "task_store_url": f"{url}/2",
        "broker_url": f"{url}/3",
        "broker_timeout_seconds": "1",
    }
    load = Load()

    log = tmp_path / "redis.log"
    server_redis = start_redis(port, log)
    try:
        with serve(tmp_path, **settings) as (base, _):
            item = httpx.post(f"{base}/items", json={"name": "cached"}, timeout=10).json()["id"]
            work = {"kind": "io", "duration_ms": 1}
            requests = [
                ("read", "GET", f"/items/{item}", None),
                ("executor", "POST", "/work/executor", work),
                ("queue", "POST", "/work/queue", work),
            ]
            with ThreadPoolExecutor(len(requests)) as pool:
                clients = [pool.submit(load.client, base, *request) for request in requests]
                try:
                    time.sleep(2)
                    stop(server_redis)
                    down = load.now()
                    time.sleep(DOWN_SECONDS)
                    server_redis = start_redis(port, log)
                    up = load.now()
                    time.sleep(BACK_WITHIN + 2)
                finally:
                    load.done.set()
                for each in clients:
                    each.result()
    finally:
        stop(server_redis)

    statuses = {status for _, _, status, _ in load.outcomes}
    assert statuses <= {200, 201, 202, 503}, sorted(statuses)  # never a 500
    assert all(retry == "5" for _, _, status, retry in load.outcomes if status == 503)
    during = [(name, status) for t, name, status, _ in load.outcomes if down + 0.5 < t < up]
    assert {name for name, status in during if status == 503} == {"executor", "queue"}, during
    assert {status for name, status in during if name == "read"} == {200}  # the cache's outage is not ours
    after = [(t - up, name, status) for t, name, status, _ in load.outcomes if t > up + BACK_WITHIN]
    assert after
    assert all(status in {200, 202} for _, _, status in after), after


def test_a_postgresql_outage_under_load_answers_503s_and_no_500(tmp_path: Path, postgres_url: str) -> None:
    load = Load()

    def admin(sql: str) -> None:
        asyncio.run(run_admin_sql(postgres_url, sql))

    with empty_database_sync(postgres_url, "asyncproof_outage") as url:
        name = url.rsplit("/", 1)[1]
        with serve(tmp_path, database_url=url) as (base, _):
            requests = [
                ("create", "POST", "/items", {"name": "load"}),
                ("list", "GET", "/items?limit=5", None),
            ]
            with ThreadPoolExecutor(len(requests)) as pool:
                clients = [pool.submit(load.client, base, *request) for request in requests]
                try:
                    time.sleep(2)
                    # The database stops taking connections and drops the ones it has, as in a restart.
                    admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                    admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
                    down = load.now()
                    time.sleep(DOWN_SECONDS)
                    admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                    up = load.now()
                    time.sleep(BACK_WITHIN + 2)
                finally:
                    load.done.set()
                    admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                for each in clients:
                    each.result()

    statuses = {status for _, _, status, _ in load.outcomes}
    assert statuses <= {200, 201, 503}, sorted(statuses)  # never a 500
    assert all(retry == "5" for _, _, status, retry in load.outcomes if status == 503)
    during = [(name, status) for t, name, status, _ in load.outcomes if down + 0.5 < t < up]
    assert {name for name, status in during if status == 503} == {"create", "list"}, during
    after = [(t - up, name, status) for t, name, status, _ in load.outcomes if t > up + BACK_WITHIN]
    assert after
    assert all(status in {200, 201} for _, _, status in after), after
