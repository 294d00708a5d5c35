"""Start-up on an empty PostgreSQL database (issue 12: workers racing to create the tables took the
whole server down in 2 of 15 starts). The schema is migrated once, before any worker starts, under
a lock; every start must bring up all its workers.

ASYNCPROOF_STARTUP_RUNS sets how many starts in a row (default 3, about 25 s); the chaos count is 20:

    ASYNCPROOF_STARTUP_RUNS=20 .venv/bin/python -m pytest -s tests/integration/test_startup_schema.py -k in_a_row
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.databases import empty_database_sync
from tests.processes import BIN, children, free_port, running, wait_for

pytestmark = pytest.mark.integration

WORKERS = 4
RUNS = int(os.environ.get("ASYNCPROOF_STARTUP_RUNS", "3"))
# Gunicorn's log line, with the worker's pid; uvicorn --workers logs it without one.
STARTED = re.compile(r"(?:\[(\d+)\] \[INFO\] |INFO: +)Application startup complete")
FAILURES = ("Worker failed to boot", "Traceback", "Reason: Worker", "exited with code")


@dataclass(frozen=True)
class Start:
    ready: float  # seconds from the command to /health/ready answering 200
    booted: float  # to the last worker's "Application startup complete"


def wait_for_startups(log: Path, process: subprocess.Popen[bytes], deadline: float = 60) -> list[str]:
    """The log's "Application startup complete" lines, once there are WORKERS of them."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = [match.group(1) or "" for match in STARTED.finditer(log.read_text())]
        if len(found) >= WORKERS:
            return found
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {WORKERS} workers started:\n{log.read_text()[-3000:]}")


def start_once(folder: Path, postgres_url: str, server: str = "gunicorn") -> Start:
    """One `asyncproof serve` with 4 workers on a new, empty database: every worker boots, the server
    is ready and stores an item; then it stops, and the database is dropped."""
    folder.mkdir()
    log = folder / "server.log"
    with empty_database_sync(postgres_url, "asyncproof_startup") as database_url:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            "ASYNCPROOF_DATABASE_URL": database_url,
            "ASYNCPROOF_STATE_DIR": str(folder / "state"),
            "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
        }
        command = [str(BIN / "asyncproof"), "serve", "--server", server, "--workers", str(WORKERS)]
        started = time.monotonic()
        with running([*command, "--port", str(port)], env=env, log=log) as process:
            wait_for(f"{url}/health/ready", process=process, deadline=60)
            ready = time.monotonic() - started
            assert httpx.get(f"{url}/health/ready", timeout=5).status_code == 200
            pids = wait_for_startups(log, process)
            booted = time.monotonic() - started
            assert len(pids) == WORKERS, log.read_text()  # none died and was replaced
            if server == "gunicorn":
                assert sorted(int(pid) for pid in pids) == children(process.pid)
            created = httpx.post(f"{url}/items", json={"name": folder.name}, timeout=5)
            assert created.status_code == 201, created.text
    text = log.read_text()
    assert [failure for failure in FAILURES if failure in text] == [], text[-3000:]
    assert text.count("asyncproof: database schema created (revision") == 1, text[-3000:]
    return Start(ready, booted)


def test_starts_in_a_row_on_an_empty_postgresql_database(tmp_path: Path, postgres_url: str) -> None:
    starts = [start_once(tmp_path / f"start-{i}", postgres_url) for i in range(RUNS)]
    ready = [start.ready for start in starts]
    booted = [start.booted for start in starts]
    print(
        f"\n{RUNS} starts of Gunicorn with {WORKERS} workers on an empty database, all up: "
        f"ready after {statistics.median(ready):.2f} s median ({min(ready):.2f}-{max(ready):.2f}), "
        f"every worker after {statistics.median(booted):.2f} s ({min(booted):.2f}-{max(booted):.2f})"
    )


def test_uvicorn_workers_start_on_an_empty_postgresql_database(tmp_path: Path, postgres_url: str) -> None:
    start_once(tmp_path / "uvicorn", postgres_url, server="uvicorn")


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_a_database_that_cannot_be_migrated_stops_the_server_before_any_worker(
    tmp_path: Path, server: str
) -> None:
    env = {
        **os.environ,
        "ASYNCPROOF_DATABASE_URL": f"postgresql+asyncpg://app:secret@127.0.0.1:{free_port()}/app",
        "ASYNCPROOF_STATE_DIR": str(tmp_path / "state"),
    }
    command = [str(BIN / "asyncproof"), "serve", "--server", server, "--port", str(free_port())]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "could not migrate the database schema of postgresql+asyncpg://app:***@127.0.0.1:" in output
    assert "secret" not in output
    assert "Booting worker" not in output
    assert "Application startup" not in output
