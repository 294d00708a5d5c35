"""The slow work every execution style runs: blocking I/O (a sleep) or CPU (a busy loop)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_DURATION_MS = 60_000
# The `task` label of the task metrics: every style runs the same work.
TASK_NAME = "work"


class WorkRequest(BaseModel):
    # The example is what `asyncproof audit` sends (schema examples come before generated data).
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"kind": "io", "duration_ms": 1000}]}
    )

    kind: Literal["io", "cpu"] = Field(description="`io`: wait (a sleep); `cpu`: a busy loop holding the GIL")
    duration_ms: int = Field(ge=0, le=MAX_DURATION_MS, description="how long the work takes")
    fail: Literal["never", "once", "always", "fatal"] = Field(
        "never",
        description="make the work fail: `once` (retryable, first attempt only), `always` (retryable, "
        "every attempt), `fatal` (not retryable)",
    )

    @field_validator("duration_ms", mode="before")
    @classmethod
    def _a_json_integer(cls, value: object) -> object:
        # What JSON Schema calls an integer (10 and 10.0), not what Python coerces (false, "10").
        if isinstance(value, bool | str):
            raise ValueError("duration_ms must be a JSON number of milliseconds")
        return value


TASK_STYLES_ONLY = "fail is only for the task styles (executor, process, background-tasks, queue)"


class InlineWorkRequest(WorkRequest):
    """Work done while the request waits: nothing retries it, so it cannot be asked to fail."""

    fail: Literal["never"] = Field("never", description=f"only `never` here: {TASK_STYLES_ONLY}")

    @field_validator("fail", mode="before")
    @classmethod
    def _only_never(cls, value: object) -> object:
        if value in ("once", "always", "fatal"):
            raise ValueError(TASK_STYLES_ONLY)
        return value


class AsyncWorkRequest(InlineWorkRequest):
    """Awaited non-blocking work: I/O only."""

    kind: Literal["io"] = Field(description="`io` only: cpu work in async def blocks the event loop")

    @field_validator("kind", mode="before")
    @classmethod
    def _io_only(cls, value: object) -> object:
        if value == "cpu":
            raise ValueError(
                "kind=cpu cannot run in async def without blocking the event loop: use /work/process"
            )
        return value


class WorkFailed(Exception):
    """The work failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self) -> tuple[object, ...]:
        # Crosses the process pool's pipe: keyword-only arguments need spelling out for pickle.
        return (_work_failed, (str(self), self.retryable))


def _work_failed(message: str, retryable: bool) -> WorkFailed:
    return WorkFailed(message, retryable=retryable)


class QueueUnavailable(Exception):
    """The work could not be handed to the task queue's broker in time."""


def _check_failure(request: WorkRequest, attempt: int) -> None:
    if request.fail == "fatal":
        raise WorkFailed("asked to fail (fatal)", retryable=False)
    if request.fail == "always" or (request.fail == "once" and attempt == 1):
        raise WorkFailed(f"asked to fail ({request.fail}) on attempt {attempt}", retryable=True)


def _result(request: WorkRequest, started: float, **extra: Any) -> dict[str, Any]:
    elapsed = (time.perf_counter() - started) * 1000
    return {
        "kind": request.kind,
        "duration_ms": request.duration_ms,
        "elapsed_ms": round(elapsed, 3),
        "pid": os.getpid(),
        **extra,
    }


def run_blocking(request: WorkRequest, attempt: int = 1, stop_at: float | None = None) -> dict[str, Any]:
    """Do the work on the calling thread, blocking it for ``duration_ms``.

    ``stop_at`` (a ``time.monotonic()`` value, comparable across processes) is the task's deadline:
    a thread or a process-pool child cannot be interrupted from outside, so the work itself stops
    there and raises ``TimeoutError``, rather than holding its thread or child after the task has
    been given up on.
    """
    started = time.perf_counter()
    seconds = request.duration_ms / 1000
    left = seconds if stop_at is None else min(seconds, max(0.0, stop_at - time.monotonic()))
    if request.kind == "io":
        time.sleep(left)
        extra: dict[str, Any] = {}
    else:
        deadline = started + left
        iterations = 0
        while time.perf_counter() < deadline:
            for _ in range(1000):
                iterations += 1
        extra = {"iterations": iterations}
    if left < seconds:
        raise TimeoutError(f"stopped after {left:.3f} s of {seconds:g} s: the task's deadline passed")
    _check_failure(request, attempt)
    return _result(request, started, **extra)


async def run_async(request: WorkRequest, attempt: int = 1) -> dict[str, Any]:
    """Non-blocking I/O: the event loop serves other requests meanwhile. ``cpu`` cannot be done so."""
    if request.kind != "io":
        raise ValueError("cpu work cannot be awaited without blocking the event loop")
    started = time.perf_counter()
    await asyncio.sleep(request.duration_ms / 1000)
    _check_failure(request, attempt)
    return _result(request, started)
