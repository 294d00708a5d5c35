"""The metrics port in multiprocess mode: one exposition process per deployment, outside the workers.

Under Gunicorn (asyncproof's hooks) and under ``uvicorn --workers`` (no hooks at all), 2 workers of
the app below: the port answers with every worker's counts; while every worker's event loop is
blocked a scrape still answers and shows the stall; the process is replaced when killed, exits with
its server (stopped or SIGKILLed), and a port taken by another program gives one warning, not a
process per second.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from asyncproof.monitoring.exposition_process import LOCK_FILE, LOG_FILE, serving_pid, with_live_stalls
from tests.integration.test_gunicorn import SETTLE, send
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

WORKERS = 2
BLOCK_SECONDS = 3.0
LAG_MAX = "asyncio_event_loop_lag_max_seconds"
APP = "tests.integration.test_exposition_process:app"


def __getattr__(name: str) -> Any:
    # The app the servers run (they import this module); made on their first access only, so that
    # collecting the tests instruments nothing in the pytest process.
    if name != "app":
        raise AttributeError(name)
    from fastapi import FastAPI, Response

    from asyncproof import monitoring

    app = FastAPI()
    port = int(os.environ["ASYNCPROOF_TEST_METRICS_PORT"])
    monitoring.instrument(app, metrics_port=port, metrics_host="127.0.0.1")

    @app.middleware("http")
    async def worker_pid(request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers["x-worker-pid"] = str(os.getpid())
        return response

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/block")
    async def block(seconds: float = 0.05) -> Response:
        time.sleep(seconds)  # the event loop stalls: what a scrape of this worker could not survive
        return Response("done")

    globals()["app"] = app
    return app


@dataclass
class Server:
    kind: str
    url: str
    metrics_url: str
    process: subprocess.Popen[bytes]
    workers: list[int]
    metrics_dir: Path
    log: Path

    @property
    def exposition_pid(self) -> int | None:
        return serving_pid(str(self.metrics_dir))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def exposition_processes(metrics_dir: Path | None = None, port: int | None = None) -> list[psutil.Process]:
    """Every exposition process started for ``metrics_dir`` (or the metrics ``port``), whoever started it."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "asyncproof.monitoring.exposition_process" not in " ".join(cmdline):
            continue
        if str(metrics_dir) in cmdline or ("--port", str(port)) in itertools.pairwise(cmdline):
            found.append(process)
    return found


def kill_exposition_processes(metrics_dir: Path | None = None, port: int | None = None) -> None:
    # They live in sessions of their own: the server's process group is not theirs.
    for process in exposition_processes(metrics_dir, port):
        with contextlib.suppress(psutil.Error):
            process.kill()


@contextlib.contextmanager
def serving(kind: str, folder: Path, metrics_port: int | None = None) -> Iterator[Server]:
    """A 2-worker server of the app above with a metrics port; everything it started is stopped."""
    port = free_port()
    metrics_port = metrics_port or free_port()
    metrics_dir = folder / "metrics"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "ASYNCPROOF_TEST_METRICS_PORT": str(metrics_port)}
    if kind == "gunicorn":
        command = [str(BIN / "gunicorn"), "-c", str(write_gunicorn_config(folder, port, WORKERS)), APP]
    else:
        command = [str(BIN / "uvicorn"), "--workers", str(WORKERS), "--port", str(port), APP]
    log = folder / f"{kind}.log"
    try:
        with running(command, env=env, log=log, grace=10) as process:
            url = f"http://127.0.0.1:{port}"
            wait_for(f"{url}/health/live", process=process)
            workers = wait_for_workers(process.pid, WORKERS)
            yield Server(kind, url, f"http://127.0.0.1:{metrics_port}", process, workers, metrics_dir, log)
    finally:
        kill_exposition_processes(metrics_dir)


def until(condition: Callable[[], object], deadline: float, message: str) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, message
        time.sleep(0.05)


def lag_max_by_pid(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[int, float]:
    return {int(dict(labels)["pid"]): value for (name, labels), value in samples.items() if name == LAG_MAX}


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(request.param, tmp_path_factory.mktemp(request.param)) as made:
        wait_for(f"{made.metrics_url}/metrics", deadline=20, process=made.process)
        yield made


def test_the_metrics_port_answers_with_every_workers_counts(server: Server) -> None:
    before = scrape(server.metrics_url)
    answers = [send(server.url, "GET", f"/items/{index}") for index in range(60)]
    answers += [send(server.url, "GET", "/block") for _ in range(6)]  # spreads them over the workers
    assert {a.status_code for a in answers} == {200}
    assert len({a.headers["x-worker-pid"] for a in answers}) == WORKERS, "requests all landed on one worker"
    time.sleep(SETTLE)
    after = scrape(server.metrics_url)
    counted = request_count(after, "GET", "/items/{item_id}", 200) - request_count(
        before, "GET", "/items/{item_id}", 200
    )
    assert counted == 60
    assert set(lag_max_by_pid(after)) == set(server.workers)
    assert not [key for key in after if key[0].startswith("asyncproof_")], "the heartbeat is not exported"
    # The workers render nothing: not on the app's port, and the one serving the port is not a worker.
    assert httpx.get(f"{server.url}/metrics", timeout=5).status_code == 404
    exposition = server.exposition_pid
    assert exposition
    assert exposition not in (*server.workers, server.process.pid)
    openmetrics = httpx.get(
        f"{server.metrics_url}/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=5
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    assert httpx.head(f"{server.metrics_url}/metrics", timeout=5).status_code == 200
    assert httpx.post(f"{server.metrics_url}/metrics", timeout=5).status_code == 405


def test_a_scrape_answers_while_every_worker_is_blocked_and_shows_the_stall(server: Server) -> None:
    answers: list[Any] = []

    def blocked_request() -> None:
        answers.append(send(server.url, "GET", f"/block?seconds={BLOCK_SECONDS}"))

    threads = []
    for _ in range(WORKERS):  # one at a time: a worker whose loop is stuck accepts no more
        thread = threading.Thread(target=blocked_request)
        thread.start()
        threads.append(thread)
        time.sleep(0.3)
    time.sleep(1.2)  # the first worker has been stuck for 1.5 s, the last for 1.2 s
    started = time.monotonic()
    samples = scrape(server.metrics_url)
    took = time.monotonic() - started
    for thread in threads:
        thread.join(timeout=30)
    assert {a.headers["x-worker-pid"] for a in answers} == {str(pid) for pid in server.workers}
    assert took < 1.0
    lags = lag_max_by_pid(samples)
    assert all(lags.get(pid, 0.0) >= 0.9 for pid in server.workers), lags
    assert all(lags[pid] < BLOCK_SECONDS for pid in server.workers), lags  # the stall so far, not more


def test_a_killed_exposition_process_is_replaced(server: Server) -> None:
    victim = server.exposition_pid
    assert victim
    os.kill(victim, signal.SIGKILL)
    until(
        lambda: server.exposition_pid not in (None, 0, victim),
        deadline=5,
        message="no exposition process replaced the killed one",
    )
    wait_for(f"{server.metrics_url}/metrics", deadline=5)
    assert len(exposition_processes(server.metrics_dir)) == 1
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
@pytest.mark.parametrize("how", ["stopped", "sigkilled"])
def test_the_exposition_process_exits_with_its_server(
    kind: str, how: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with serving(kind, tmp_path_factory.mktemp(kind)) as server:
        wait_for(f"{server.metrics_url}/metrics", deadline=20, process=server.process)
        exposition = psutil.Process(server.exposition_pid)
        if how == "stopped":
            server.process.send_signal(signal.SIGTERM)
        else:
            server.process.kill()
        server.process.wait(timeout=30)
        exposition.wait(timeout=2)
        # Under uvicorn a SIGKILLed supervisor leaves its workers running: they must not start
        # another exposition process for a deployment that is gone.
        time.sleep(1.5)
        assert exposition_processes(server.metrics_dir) == []


@pytest.mark.parametrize("server_kind", ["gunicorn", "uvicorn"])
def test_asyncproof_serve_answers_metrics_on_its_metrics_port(server_kind: str, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    env = {"ASYNCPROOF_STATE_DIR": str(tmp_path / "state"), "ASYNCPROOF_METRICS_PORT": str(metrics_port)}
    command = [
        str(BIN / "asyncproof"),
        "serve",
        "--server",
        server_kind,
        "--workers",
        "2",
        "--port",
        str(port),
    ]
    try:
        with running(command, env=env, log=tmp_path / "server.log") as process:
            url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
            wait_for(f"{url}/health/ready", process=process)
            assert send(url, "GET", "/info").status_code == 200
            time.sleep(SETTLE)
            assert request_count(scrape(metrics_url), "GET", "/info", 200) >= 1
            assert httpx.get(f"{url}/metrics", timeout=5).status_code == 404
        assert f"/metrics on http://127.0.0.1:{metrics_port}/metrics" in (tmp_path / "server.log").read_text()
    finally:
        kill_exposition_processes(port=metrics_port)


@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_a_taken_port_gives_one_warning_and_no_process_per_second(
    kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    metrics_port = squatter.getsockname()[1]
    try:
        with serving(kind, tmp_path_factory.mktemp(kind), metrics_port=metrics_port) as server:
            time.sleep(6)
            assert httpx.get(f"{server.url}/items/1", timeout=5).status_code == 200  # the app serves
            warning = f"the metrics port 127.0.0.1:{metrics_port} is taken by another program"
            assert server.log_text().count(warning) == 1, server.log_text()
            attempts = (server.metrics_dir / LOG_FILE).read_text().count("cannot listen")
            assert 1 <= attempts <= 4  # after 0, 1, 3 (and 7) s: the workers back off together
            squatter.close()
            wait_for(f"{server.metrics_url}/metrics", deadline=12, process=server.process)
            assert "serves /metrics on" in server.log_text()  # and it says so
    finally:
        squatter.close()


def test_a_stuck_workers_lag_max_is_the_stall_so_far_and_the_heartbeat_is_dropped() -> None:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.samples import Sample

    alive, gone = str(os.getpid()), str(2**22 + 7)  # above any pid_max: no such process
    heartbeat = Metric("asyncproof_loop_next_tick_monotonic_seconds", "", "gauge")
    heartbeat.samples = [
        Sample(heartbeat.name, {"pid": alive}, 100.0),
        Sample(heartbeat.name, {"pid": gone}, 100.0),
    ]
    lag_max = Metric(LAG_MAX, "", "gauge")
    lag_max.samples = [Sample(LAG_MAX, {"pid": alive}, 0.5), Sample(LAG_MAX, {"pid": gone}, 0.25)]
    families = with_live_stalls([heartbeat, lag_max], now=102.0)
    assert [f.name for f in families] == [LAG_MAX]
    assert {s.labels["pid"]: s.value for s in families[0].samples} == {alive: 2.0, gone: 0.25}
    # due in the future, or not running (0): what the worker stored stands
    heartbeat.samples = [Sample(heartbeat.name, {"pid": alive}, 0.0)]
    assert with_live_stalls([heartbeat, lag_max], now=102.0)[0].samples == lag_max.samples
    assert LOCK_FILE.startswith(".")  # never a *.db file the collector would read
