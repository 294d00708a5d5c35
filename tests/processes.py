"""Start real servers on loopback for integration tests, and always stop them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from asyncproof.loadtests.processes import BIN, children, free_port, running, stop, wait_for

__all__ = [
    "BIN",
    "ROOT",
    "children",
    "free_port",
    "request_count",
    "running",
    "scrape",
    "stop",
    "wait_for",
    "wait_for_workers",
    "write_gunicorn_config",
]

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


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


def write_gunicorn_config(folder: Path, port: int, workers: int) -> Path:
    """A Gunicorn config as the README shows it: asyncproof's hooks, loopback, Uvicorn workers."""
    config = folder / "gunicorn.conf.py"
    config.write_text(
        "from asyncproof.monitoring.gunicorn import *\n"
        f'bind = "127.0.0.1:{port}"\n'
        f"workers = {workers}\n"
        'worker_class = "uvicorn_worker.UvicornWorker"\n'
    )
    return config
