"""The stall watchdog on an application written elsewhere: a small shop project outside this checkout,
with blocking calls in its routes, in a helper module and in a BackgroundTask at known lines, served
by Gunicorn with two workers and driven one request at a time. The counters per route, the blocked
seconds and the places the log names are compared with the known truth; routes that never block the
loop (an awaited sleep, a sync ``def`` in the threadpool) show no stall."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.processes import BIN, free_port, running, scrape, wait_for, wait_for_workers, write_gunicorn_config

pytestmark = pytest.mark.integration

MAIN = """
import asyncio
import logging
import sys
import time

from fastapi import BackgroundTasks, FastAPI

from asyncproof import monitoring
from shop import helpers

handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(monitoring.JsonFormatter())
handler.addFilter(monitoring.RequestIdFilter())
logging.getLogger("asyncproof.stalls").addHandler(handler)

app = FastAPI()
monitoring.instrument(app, request_id_header="X-Request-ID")


@app.get("/report")
async def report() -> dict[str, str]:
    time.sleep(0.3)  # BLOCKS: report
    return {"report": "done"}


@app.get("/crunch/{n}")
async def crunch(n: int) -> dict[str, int]:
    helpers.crunch(0.3)
    return {"n": n}


@app.post("/notify")
async def notify(tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(helpers.send_email)
    return {"queued": "yes"}


@app.get("/fine")
async def fine() -> dict[str, str]:
    await asyncio.sleep(0.05)
    return {"fine": "yes"}


@app.get("/thread")
def thread() -> dict[str, str]:
    time.sleep(0.3)  # a sync def runs in the threadpool: the loop stays free
    return {"thread": "yes"}
"""

HELPERS = """
import hashlib
import time


def crunch(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 20_000)  # BLOCKS: crunch


async def send_email() -> None:
    time.sleep(0.25)  # BLOCKS: send_email
"""

# route -> requests sent (each blocking one, one at a time)
BLOCKING = {"/report": 5, "/crunch/{n}": 4, "/notify": 3}
FREE = {"/fine": 10, "/thread": 4}


def line_of(source: str, marker: str) -> int:
    return next(number for number, line in enumerate(source.splitlines(), 1) if f"# BLOCKS: {marker}" in line)


def write_project(root: Path) -> dict[str, str]:
    """The shop project; returns the place each blocking route must be attributed to."""
    package = root / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    main, helpers = textwrap.dedent(MAIN).lstrip(), textwrap.dedent(HELPERS).lstrip()
    (package / "main.py").write_text(main)
    (package / "helpers.py").write_text(helpers)
    return {
        "/report": f"shop/main.py:{line_of(main, 'report')} in report (time.sleep)",
        "/crunch/{n}": f"shop/helpers.py:{line_of(helpers, 'crunch')} in crunch (hashlib.pbkdf2_hmac)",
        "/notify": f"shop/helpers.py:{line_of(helpers, 'send_email')} in send_email (time.sleep)",
    }


def stall_records(log: Path) -> list[dict[str, object]]:
    records = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"asyncproof.stalls"' in line:
            records.append(json.loads(line))
    return records


def test_stalls_of_an_application_written_elsewhere_are_named_by_route_and_line(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    truth = write_project(project)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_gunicorn_config(tmp_path, port, 2)
    command = [str(BIN / "gunicorn"), "-c", str(config), "shop.main:app"]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "PYTHONPATH": str(project)}
    log = tmp_path / "server.log"
    with running(command, env=env, log=log, cwd=project) as process:
        wait_for(f"{url}/health/live", process=process)
        wait_for_workers(process.pid, 2)
        ids = []
        with httpx.Client(base_url=url, timeout=10) as client:
            for number in range(BLOCKING["/report"]):
                ids.append(f"report-{number:04d}")
                assert client.get("/report", headers={"X-Request-ID": ids[-1]}).status_code == 200
            for number in range(BLOCKING["/crunch/{n}"]):
                assert client.get(f"/crunch/{number}").status_code == 200
            for _ in range(BLOCKING["/notify"]):
                assert client.post("/notify").status_code == 200
                wait_for(f"{url}/fine", process=process)  # the task ran: its worker answers again
            for _ in range(FREE["/fine"]):
                assert client.get("/fine").status_code == 200
            for _ in range(FREE["/thread"]):
                assert client.get("/thread").status_code == 200
        samples = scrape(url)
    stalls = {
        dict(labels)["http_route"]: value
        for (name, labels), value in samples.items()
        if name == "asyncio_event_loop_stalls_total"
    }
    blocked = {
        dict(labels)["http_route"]: value
        for (name, labels), value in samples.items()
        if name == "asyncio_event_loop_blocked_seconds_total"
    }
    # every blocking request is one stall of its route; the free routes never stalled the loop
    for route, count in BLOCKING.items():
        assert stalls.get(route) == count, (route, stalls)
    assert not set(stalls) & set(FREE), stalls
    assert 5 * 0.2 <= blocked["/report"] <= 5 * 0.45, blocked
    assert 4 * 0.2 <= blocked["/crunch/{n}"] <= 4 * 0.45, blocked
    assert 3 * 0.15 <= blocked["/notify"] <= 3 * 0.4, blocked
    # the log names the method, route, place and call; once per route and place and worker
    records = stall_records(log)
    assert records, log.read_text()[-3000:]
    places = {
        (record["http_route"], f"{record['stall_place']} ({record['stall_call']})") for record in records
    }
    assert places == {(route, place) for route, place in truth.items()}, places
    logged: dict[str, int] = {}
    for record in records:
        route = str(record["http_route"])
        method = "POST" if route == "/notify" else "GET"
        # the first stall at a place, at once; the others in one line per interval (here: at shutdown)
        assert re.fullmatch(
            rf"event loop blocked [0-9.]+ s in {method} {re.escape(route)} at {re.escape(truth[route])}"
            r"( over \d+ more stalls? in the last [0-9.]+ s \([0-9.]+ s the longest\))?",
            str(record["message"]),
        ), record["message"]
        assert record["stall_frames"], record
        if route == "/report" and record["stall_count"] == 1:
            assert record["request_id"] in ids
        logged[route] = logged.get(route, 0) + int(str(record["stall_count"]))
    assert logged == BLOCKING  # every stall logged, once
    assert len(records) <= 2 * 2 * len(truth)  # per worker, route and place: the first and one summary
