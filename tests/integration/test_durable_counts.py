"""A request whose response reached the client is in the next scrape, even when every worker is then
killed with SIGKILL at once: under Gunicorn and under ``uvicorn --workers``, exact per route, status
and duration bucket."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from asyncproof.monitoring.recorder import FILE_PREFIX
from tests.integration.test_gunicorn import send
from tests.processes import (
    BIN,
    Samples,
    free_port,
    request_count,
    running,
    scrape,
    wait_for,
    wait_for_workers,
    write_gunicorn_config,
)

pytestmark = pytest.mark.integration

WORKERS = 2
SLOW = 0.06  # lands in the 0.075 s bucket, never in 0.05


def requests(count: int) -> list[tuple[str, str, str, int]]:
    """(method, path, route label, expected status) — a mix of routes, statuses and one duration."""
    mix = [
        ("GET", "/items/{n}", "/items/{item_id}", 200),
        ("GET", "/items/{missing}", "/items/{item_id}", 404),
        ("POST", "/items", "/items", 201),
        ("GET", f"/slow?seconds={SLOW}", "/slow", 200),
    ]
    return [
        (method, path.format(n=number % 1000, missing=1000 + number), route, status)
        for number in range(count)
        for method, path, route, status in [mix[number % len(mix)]]
    ]


def bucket_count(samples: Samples, route: str, le: str) -> float:
    labels = (
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
        ("http_route", route),
        ("le", le),
    )
    return samples.get(("http_server_request_duration_seconds_bucket", labels), 0.0)


def http_files(folder: Path, pids: list[int]) -> list[str]:
    return [name for name in os.listdir(folder) if any(name == f"{FILE_PREFIX}{pid}.db" for pid in pids)]


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_every_answered_request_survives_sigkill_of_every_worker(tmp_path: Path, server: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (tmp_path / "check").write_text("ok")
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "ASYNCPROOF_TEST_CHECK_FILE": str(tmp_path / "check"),
    }
    if server == "gunicorn":
        config = write_gunicorn_config(tmp_path, port, WORKERS)
        command = [str(BIN / "gunicorn"), "-c", str(config), "tests.integration.sample_app:app"]
    else:
        command = [str(BIN / "uvicorn"), "--workers", str(WORKERS), "--port", str(port)]
        command.append("tests.integration.sample_app:app")
    with running(command, env=env, log=tmp_path / "server.log") as process:
        wait_for(f"{url}/health/live", process=process)
        workers = wait_for_workers(process.pid, WORKERS)
        answered: Counter[tuple[str, str, int]] = Counter()
        with ThreadPoolExecutor(8) as pool:
            plan = requests(400)
            answers = pool.map(lambda item: send(url, item[0], item[1]).status_code, plan)
            for (method, _, route, _), status in zip(plan, answers, strict=True):
                answered[method, route, status] += 1
        for pid in workers:  # at once: no time for anything to be flushed
            os.kill(pid, signal.SIGKILL)
        replacements = wait_for_workers(process.pid, WORKERS, exclude=workers)
        wait_for(f"{url}/health/live", process=process)
        deadline = time.monotonic() + 20
        while http_files(metrics_dir, workers):  # retired: folded into the archive
            assert time.monotonic() < deadline, "the killed workers' files were never retired"
            time.sleep(0.2)
        samples = scrape(url)
    assert replacements
    assert sum(answered.values()) == 400
    assert answered == {
        ("GET", "/items/{item_id}", 200): 100,
        ("GET", "/items/{item_id}", 404): 100,
        ("POST", "/items", 201): 100,
        ("GET", "/slow", 200): 100,
    }
    for (method, route, status), count in answered.items():
        assert request_count(samples, method, route, status) == count, (method, route, status)
    assert bucket_count(samples, "/slow", "0.05") == 0
    assert bucket_count(samples, "/slow", "0.075") == 100
