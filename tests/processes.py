"""Start real servers on loopback for integration tests, and always stop them."""

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
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, deadline: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
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
    command: Sequence[str], *, env: dict[str, str] | None = None, log: Path, cwd: Path = ROOT
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
            stop(process)


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
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


def wait_for_workers(
    parent: int, count: int, exclude: Sequence[int] = (), deadline: float = 30.0
) -> list[int]:
    """Wait until ``parent`` has ``count`` live children, none of them in ``exclude``."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        pids = children(parent)
        if len(pids) == count and not set(pids) & set(exclude):
            return pids
        time.sleep(0.1)
    raise TimeoutError(f"expected {count} workers of {parent}, have {children(parent)}")


def scrape(base_url: str) -> Samples:
    response = httpx.get(f"{base_url}/metrics", timeout=10, follow_redirects=False)
    response.raise_for_status()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def request_count(samples: Samples, method: str, route: str, status: int) -> float:
    labels = (
        ("http_request_method", method),
        ("http_response_status_code", str(status)),
        ("http_route", route),
    )
    return samples.get(("http_server_request_duration_seconds_count", labels), 0.0)
