"""Schemathesis over the reference app's OpenAPI schema, against the served app.

The app runs as users run it (``asyncproof serve``), with a broker so that ``/work/queue`` can accept
work. Schemathesis runs every phase (examples, boundary coverage, fuzzing, stateful) with every check:
no 5xx, status codes and bodies as documented, invalid input refused, valid input accepted.
``fuzz_hooks.py`` cuts work durations to a few milliseconds so that the run stays short.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.processes import BIN, free_port, running, wait_for

pytestmark = pytest.mark.integration

BROKER_DB = 13  # nobody consumes these tasks: the database is emptied before and after


@pytest.fixture
def served(tmp_path: Path, redis_url: str) -> Iterator[str]:
    broker = redis_url.rsplit("/", 1)[0] + f"/{BROKER_DB}"
    redis.Redis.from_url(broker).flushdb()
    env = {"ASYNCPROOF_STATE_DIR": str(tmp_path / "state"), "ASYNCPROOF_BROKER_URL": broker}
    port = free_port()
    command = [str(BIN / "asyncproof"), "serve", "--server", "uvicorn", "--workers", "1", "--port", str(port)]
    try:
        with running(command, env=env, log=tmp_path / "server.log") as process:
            url = f"http://127.0.0.1:{port}"
            wait_for(f"{url}/health/ready", process=process)
            yield url
    finally:
        redis.Redis.from_url(broker).flushdb()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(served: str, tmp_path: Path) -> None:
    command = [
        str(BIN / "schemathesis"),
        "run",
        f"{served}/openapi.json",
        "--max-examples=30",
        "--seed=20261123",
        "--request-timeout=10",
        # Starlette answers a 405 with the Allow header of the first route matching the path only
        # (GET and POST /items are two routes, so OPTIONS /items gets `Allow: POST`).
        "--exclude-checks=allow_header_conformance",
        f"--report-dir={tmp_path / 'report'}",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(Path(__file__).with_name("fuzz_hooks.py"))}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "API Operations" in result.stdout
    assert "Tested: 12" in result.stdout, result.stdout[-3000:]
