"""The exact-count promise under every ASGI server users run with several worker processes.

Each server runs the sample app with 2 workers sharing one ``PROMETHEUS_MULTIPROC_DIR``. Gunicorn's
config imports our hooks (which empty the folder on start and retire dead workers); the other servers
have no hooks, so the folder is created empty before they start, as their users must do, and the
workers sweep dead siblings themselves.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from asyncproof.monitoring.contract import UNMATCHED_ROUTE
from tests.integration.test_gunicorn import SETTLE, send
from tests.processes import (
    BIN,
    ROOT,
    Samples,
    free_port,
    running,
    scrape,
    wait_for,
    wait_for_workers,
    write_gunicorn_config,
)
from tests.services import unavailable

pytestmark = pytest.mark.integration

APP = "tests.integration.sample_app:app"
WORKERS = 2


def gunicorn_config(port: int, folder: Path) -> list[str]:
    return ["-c", str(write_gunicorn_config(folder, port, WORKERS)), APP]


@dataclass(frozen=True)
class Server:
    executable: str  # a console script next to the test environment's python
    extra: str  # the asyncproof extra that installs it
    arguments: Callable[[int, Path], list[str]]  # (port, scratch folder) -> command-line arguments


SERVERS = {
    "uvicorn": Server(
        "uvicorn",
        "server",
        lambda port, _: ["--workers", str(WORKERS), "--host", "127.0.0.1", "--port", str(port), APP],
    ),
    "gunicorn": Server("gunicorn", "server", gunicorn_config),
    "hypercorn": Server(
        "hypercorn",
        "dev",
        lambda port, _: [
            *("--workers", str(WORKERS), "--worker-class", "asyncio"),
            *("--bind", f"127.0.0.1:{port}"),
            APP,
        ],
    ),
    "granian": Server(
        "granian",
        "dev",
        lambda port, _: [
            *("--interface", "asgi", "--workers", str(WORKERS)),
            *("--host", "127.0.0.1", "--port", str(port)),
            APP,
        ],
    ),
}

# (method, path, status, route label, requests sent)
PLAN = [
    ("GET", "/items/1", 200, "/items/{item_id}", 120),
    ("GET", "/items/5000", 404, "/items/{item_id}", 40),  # HTTPException raised by the endpoint
    ("GET", "/items/abc", 422, "/items/{item_id}", 20),  # FastAPI's validation error
    ("POST", "/items", 201, "/items", 50),
    ("GET", "/no/such/page", 404, UNMATCHED_ROUTE, 30),
    # Fast requests on fresh connections may all be accepted by one worker; each of these stalls the
    # event loop of the worker that takes it, so connections arriving meanwhile go to the other one.
    ("GET", "/block", 200, "/block", 12),
]


def request_counts(samples: Samples) -> dict[tuple[str, str, int], float]:
    """Every request series of a scrape: (method, route, status) -> count."""
    counts = {}
    for (name, labels), value in samples.items():
        if name == "http_server_request_duration_seconds_count":
            label = dict(labels)
            key = (label["http_request_method"], label["http_route"], int(label["http_response_status_code"]))
            counts[key] = value
    return counts


@pytest.mark.parametrize("name", list(SERVERS))
def test_scraped_counts_equal_requests_sent_per_route_and_status(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = SERVERS[name]
    executable = BIN / server.executable
    if not executable.exists():
        unavailable(f"{name} is not installed in {BIN} (pip install 'asyncproof[{server.extra}]')")
    folder = tmp_path_factory.mktemp(name)
    metrics_dir = folder / "metrics"
    metrics_dir.mkdir()
    (folder / "check-mode").write_text("ok")
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "ASYNCPROOF_TEST_CHECK_FILE": str(folder / "check-mode"),
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    plan = [(method, path, status) for method, path, status, _, sent in PLAN for _ in range(sent)]
    random.Random(5).shuffle(plan)
    command = [str(executable), *server.arguments(port, folder)]
    with running(command, env=env, log=folder / "server.log", cwd=ROOT) as process:
        wait_for(f"{url}/health/live", process=process)
        wait_for_workers(process.pid, WORKERS)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda request: send(url, request[0], request[1]), plan))
        assert [answer.status_code for answer in answers] == [status for _, _, status in plan]
        served = Counter(answer.headers["x-worker-pid"] for answer in answers)
        assert len(served) == WORKERS, f"requests served per worker pid: {dict(served)}"
        time.sleep(SETTLE)
        scraped = request_counts(scrape(url))
    # every series, exactly: nothing missing, nothing counted twice, no series that was not sent
    assert scraped == {(method, route, status): sent for method, _, status, route, sent in PLAN}
