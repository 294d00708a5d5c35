"""`monitoring` under Gunicorn with 3 Uvicorn workers, with a config that only imports our hooks."""

from __future__ import annotations

import http.client
import os
import random
import signal
import string
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.processes import (
    BIN,
    free_port,
    request_count,
    running,
    scrape,
    wait_for,
    wait_for_workers,
    write_gunicorn_config,
)

pytestmark = pytest.mark.integration

WORKERS = 3
# The contract: a scrape includes every request that completed at least one second before it.
SETTLE = 1.1


@dataclass
class Server:
    url: str
    master: int
    workers: list[int]
    check_file: Path
    metrics_dir: Path


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("gunicorn")
    port = free_port()
    config = write_gunicorn_config(folder, port, WORKERS)
    metrics_dir = folder / "metrics"
    check_file = folder / "check-mode"
    check_file.write_text("ok")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "ASYNCPROOF_TEST_CHECK_FILE": str(check_file)}
    command = [str(BIN / "gunicorn"), "-c", str(config), "tests.integration.sample_app:app"]
    with running(command, env=env, log=folder / "gunicorn.log") as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health/live", process=process)
        workers = wait_for_workers(process.pid, WORKERS)
        yield Server(url, process.pid, workers, check_file, metrics_dir)


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]


def send(url: str, method: str, path: str) -> Answer:
    # A fresh connection per request (so that requests spread over the workers), and http.client
    # rather than an httpx client per request, which costs ten times more.
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()})
    finally:
        connection.close()


def test_scraped_counts_equal_requests_sent_per_route_and_status(gunicorn: Server) -> None:
    before = scrape(gunicorn.url)
    # Fast requests on fresh connections may all be accepted by one worker (the kernel wakes whichever
    # waits); the few /block requests stall the worker that takes them, so the others must accept.
    plan = (
        [("GET", "/items/1", 200)] * 120
        + [("GET", "/items/5000", 404)] * 45
        + [("POST", "/items", 201)] * 60
        + [("GET", "/block", 200)] * 10
    )
    random.Random(3).shuffle(plan)
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda p: send(gunicorn.url, p[0], p[1]), plan))
    assert [r.status_code for r in responses] == [status for _, _, status in plan]
    assert len({r.headers["x-worker-pid"] for r in responses}) > 1, "requests all landed on one worker"
    time.sleep(SETTLE)
    after = scrape(gunicorn.url)
    for method, route, status, sent in [
        ("GET", "/items/{item_id}", 200, 120),
        ("GET", "/items/{item_id}", 404, 45),
        ("POST", "/items", 201, 60),
        ("GET", "/block", 200, 10),
    ]:
        counted = request_count(after, method, route, status) - request_count(before, method, route, status)
        assert counted == sent, (method, route, status)


def test_metrics_answers_200_without_redirect(gunicorn: Server) -> None:
    response = httpx.get(gunicorn.url + "/metrics", follow_redirects=False)
    assert response.status_code == 200
    assert "http_server_request_duration_seconds_bucket" in response.text


def test_random_paths_and_junk_methods_add_no_series(gunicorn: Server) -> None:
    junk = ["BREW", "PROPFIND", "XYZZY", "M-SEARCH", "FOO"]
    send(gunicorn.url, "GET", "/warm-up-unmatched")
    for method in junk:  # some reach the app (as _OTHER), the server's parser refuses others
        send(gunicorn.url, method, "/items/1")
    time.sleep(SETTLE)
    series_before = set(scrape(gunicorn.url))
    rng = random.Random(11)

    def hostile(index: int) -> int:
        if index % 4 == 0:
            return send(gunicorn.url, rng.choice(junk), f"/items/{index}").status_code
        path = "/" + "/".join(
            "".join(rng.choices(string.ascii_letters + string.digits, k=8)) for _ in range(3)
        )
        return send(gunicorn.url, "GET", path).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(hostile, range(2000)))
    assert set(statuses) <= {400, 404, 405}  # 400: the server's parser refused the method
    time.sleep(SETTLE)
    after = scrape(gunicorn.url)
    new_series = {
        key
        for key in set(after) - series_before
        if not key[0].startswith(("process_", "asyncio_", "system_"))
    }
    assert new_series == set()


def test_killed_worker_is_replaced_and_no_counter_goes_down(gunicorn: Server) -> None:
    for index in range(60):
        send(gunicorn.url, "GET", f"/items/{index}")
    time.sleep(SETTLE)
    before = scrape(gunicorn.url)
    victim = gunicorn.workers[0]
    assert any(key == ("process_resident_memory_bytes", (("pid", str(victim)),)) for key in before)
    os.kill(victim, signal.SIGKILL)
    gunicorn.workers = wait_for_workers(gunicorn.master, WORKERS, exclude=[victim])
    wait_for(gunicorn.url + "/health/live")
    time.sleep(SETTLE + 1)  # the new worker reports its process metrics within a second
    after = scrape(gunicorn.url)
    for key, value in before.items():
        name = key[0]
        if name.endswith(("_total", "_count", "_sum", "_bucket")) and not name.startswith(
            ("process_", "asyncio_event_loop_lag")
        ):
            assert after.get(key, 0.0) >= value, key
    assert not [key for key in after if ("pid", str(victim)) in key[1]], "the dead worker's series remain"
    live_pids = {dict(key[1])["pid"] for key in after if key[0] == "process_resident_memory_bytes"}
    assert live_pids == {str(pid) for pid in gunicorn.workers}
    # no file of the dead worker is left for every later scrape to parse
    assert not [name for name in os.listdir(gunicorn.metrics_dir) if name.endswith(f"_{victim}.db")]
    # its in-flight gauge went with it
    active = sum(v for (name, _), v in after.items() if name == "http_server_active_requests")
    assert active <= WORKERS  # only the scrape itself may be in flight


@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_readiness_turns_503_while_liveness_stays_200(gunicorn: Server, mode: str) -> None:
    gunicorn.check_file.write_text(mode)
    try:
        time.sleep(0.3)  # readiness results are cached for 0.2 s
        for _ in range(6):  # several connections, so several workers answer
            started = time.monotonic()
            ready = httpx.get(gunicorn.url + "/health/ready", timeout=5)
            assert ready.status_code == 503
            assert time.monotonic() - started < 1.5
            live = httpx.get(gunicorn.url + "/health/live", timeout=5)
            assert live.status_code == 200
        document = httpx.get(gunicorn.url + "/health", timeout=5)
        assert document.status_code == 503
        assert document.json()["checks"]["dependency:responseTime"][0]["status"] == "fail"
    finally:
        gunicorn.check_file.write_text("ok")
    time.sleep(0.3)
    assert httpx.get(gunicorn.url + "/health/ready", timeout=5).status_code == 200
