"""`uvicorn --workers` has no child_exit hook: the workers sweep the files of dead siblings themselves."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.test_gunicorn import SETTLE, send
from tests.processes import BIN, free_port, request_count, running, scrape, wait_for, wait_for_workers

pytestmark = pytest.mark.integration


def test_dead_worker_is_swept_and_its_counts_kept(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("uvicorn")
    metrics_dir = folder / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(BIN / "uvicorn"),
        "--workers",
        "2",
        "--port",
        str(port),
        "tests.integration.sample_app:app",
    ]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "ASYNCPROOF_TEST_CHECK_FILE": str(folder / "none")}
    (folder / "none").write_text("ok")
    with running(command, env=env, log=folder / "uvicorn.log") as process:
        wait_for(f"{url}/health/live", process=process)
        workers = wait_for_workers(process.pid, 2)
        for index in range(40):
            assert send(url, "GET", f"/items/{index}").status_code == 200
        time.sleep(SETTLE)
        before = scrape(url)
        assert request_count(before, "GET", "/items/{item_id}", 200) == 40
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while any(name.endswith(f"_{victim}.db") for name in os.listdir(metrics_dir)):
            assert time.monotonic() < deadline, "the dead worker's files were never swept"
            time.sleep(0.2)
        after = scrape(url)
    assert request_count(after, "GET", "/items/{item_id}", 200) == 40
    assert not [key for key in after if ("pid", str(victim)) in key[1]]
