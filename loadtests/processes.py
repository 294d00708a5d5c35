"""Start servers and load generators on loopback, and always stop them (tests and ``prove`` share this)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import psutil

# Console scripts of the environment asyncproof runs in (gunicorn, uvicorn, locust, celery ...).
BIN = Path(sys.executable).parent


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, deadline: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers below 500; fail early if ``process`` exits meanwhile."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {deadline}s")


@contextlib.contextmanager
def running(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    log: Path,
    cwd: Path | None = None,
    grace: float = 10.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in its own process group; on exit stop the whole group, even on failure."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            stop(process, grace)


def run_bounded(command: Sequence[str], *, log: Path, seconds: float, grace: float = 5.0) -> int:
    """Run ``command`` until it exits, ``seconds`` at most (then stop it); its exit code, -1 if stopped."""
    deadline = time.monotonic() + seconds
    with running(command, log=log, grace=grace) as process:
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        code = process.poll()
        return -1 if code is None else code


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``grace`` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    # children that outlived their parent
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def children(pid: int) -> list[int]:
    """Live worker processes of ``pid`` (multiprocessing's resource tracker is not a worker)."""
    try:
        found = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    workers = []
    for child in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                workers.append(child.pid)
    return sorted(workers)
