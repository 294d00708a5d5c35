"""An app whose routes block the event loop at known lines, for the stall tests: in the pytest process
(``create_app``) and under uvicorn (``tests.monitoring.stall_work:app``, options from the
environment). The lines are found by their ``# STALL:`` markers (:func:`marked`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, BackgroundTasks, FastAPI

from asyncproof import monitoring

HERE = Path(__file__)
_spawned: set[asyncio.Task[None]] = set()


def marked(marker: str) -> str:
    """``tests/monitoring/stall_work.py:LINE`` of the line that carries ``# STALL: marker``."""
    for number, line in enumerate(HERE.read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# STALL: {marker}"):
            return f"tests/monitoring/stall_work.py:{number}"
    raise LookupError(marker)


def crunch(seconds: float) -> int:
    """A pure-Python CPU loop with no call inside its body: its place has no call."""
    total = 0
    end = time.perf_counter() + seconds
    while True:
        for number in range(50_000):
            total += number * number  # STALL: crunch
        if time.perf_counter() >= end:
            return total


async def blocking_job(seconds: float) -> None:
    time.sleep(seconds)  # STALL: job


class SlowStart:
    """A middleware inside asyncproof's that blocks before routing when asked (``x-slow-start``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (b"x-slow-start", b"1") in scope["headers"]:
            time.sleep(0.05)  # STALL: slow start
        await self.app(scope, receive, send)


def create_app(**options: Any) -> tuple[FastAPI, monitoring.Instrumentation]:
    app = FastAPI()
    app.add_middleware(SlowStart)  # added first: inside the metrics middleware
    reports = APIRouter(prefix="/reports")

    @app.get("/sleep")
    async def sleep(seconds: float = 0.3) -> dict[str, str]:
        time.sleep(seconds)  # STALL: sleep
        return {}

    @app.get("/crunch")
    async def cpu(seconds: float = 0.3) -> dict[str, str]:
        crunch(seconds)
        return {}

    @app.get("/hash")
    async def hash_(iterations: int = 100_000) -> dict[str, str]:
        hashlib.pbkdf2_hmac("sha256", b"password", b"salt", iterations)  # STALL: hash
        return {}

    @app.get("/fast")
    async def fast() -> dict[str, str]:
        await asyncio.sleep(0)
        return {}

    @app.get("/background")
    async def background(tasks: BackgroundTasks, seconds: float = 0.3) -> dict[str, str]:
        tasks.add_task(blocking_job, seconds)
        return {}

    @app.get("/spawn")
    async def spawn(seconds: float = 0.3) -> dict[str, str]:
        task = asyncio.get_running_loop().create_task(blocking_job(seconds))
        _spawned.add(task)
        task.add_done_callback(_spawned.discard)
        return {}

    @reports.get("/{report_id}")
    async def report(report_id: int, seconds: float = 0.3) -> dict[str, int]:
        time.sleep(seconds)  # STALL: report
        return {"report_id": report_id}

    app.include_router(reports)
    return app, monitoring.instrument(app, **options)


def __getattr__(name: str) -> Any:
    # The app uvicorn runs, made on first access: importing this module instruments nothing.
    if name != "app":
        raise AttributeError(name)
    threshold = os.environ.get("ASYNCPROOF_TEST_STALL_THRESHOLD")
    app, _ = create_app(stall_threshold=float(threshold) if threshold else 0.1)
    globals()["app"] = app
    return app
