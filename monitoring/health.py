"""Health endpoints an orchestrator can trust.

* ``/health/live`` answers as long as the process and its event loop do; it never looks at
  dependencies, so a database outage does not get every pod restarted.
* ``/health/ready`` runs the registered checks concurrently, each under its own timeout, caches the
  outcome briefly so a probe storm does not hammer dependencies, and answers 503 when a critical check
  fails or hangs, and while the process is shutting down.
* ``/health`` is the full ``application/health+json`` document (draft-inadarei-api-health-check) with
  readiness's status code.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse

Status = Literal["pass", "warn", "fail"]
CheckFunc = Callable[[], Awaitable[object]]
HEALTH_JSON = "application/health+json"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class HealthCheck:
    name: str
    func: CheckFunc
    timeout: float
    critical: bool


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    duration_seconds: float
    time: str
    output: str = ""


@dataclass(frozen=True)
class HealthReport:
    status: Status
    checks: tuple[CheckResult, ...] = field(default=())

    @property
    def http_status(self) -> int:
        return 503 if self.status == "fail" else 200

    def document(self, *, service_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status}
        if service_id:
            body["serviceId"] = service_id
        body["checks"] = {
            f"{result.name}:responseTime": [
                {
                    "componentId": result.name,
                    "status": result.status,
                    "observedValue": round(result.duration_seconds * 1000, 3),
                    "observedUnit": "ms",
                    "time": result.time,
                    **({"output": result.output} if result.output else {}),
                }
            ]
            for result in self.checks
        }
        return body


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Health:
    """The registry of readiness checks and the process's shutdown state."""

    def __init__(self, *, cache_seconds: float = 1.0, service_id: str | None = None) -> None:
        if cache_seconds < 0:
            raise ValueError("cache_seconds must be >= 0 (0 disables the readiness cache)")
        self.cache_seconds = cache_seconds
        self.service_id = service_id
        self._checks: dict[str, HealthCheck] = {}
        self._cached: tuple[float, HealthReport] | None = None
        self._running: asyncio.Task[HealthReport] | None = None
        self.shutting_down = False
        # Called with every fresh report (not cached ones): instrument() records it as metrics.
        self.on_report: Callable[[HealthReport], None] | None = None

    @property
    def checks(self) -> tuple[HealthCheck, ...]:
        return tuple(self._checks.values())

    def add_check(self, name: str, func: CheckFunc, *, timeout: float = 1.0, critical: bool = True) -> None:
        """Register an async readiness check.

        ``func`` takes no argument; it passes by returning (a string it returns becomes the check's
        ``output``) and fails by raising or by running longer than ``timeout`` seconds. A failing
        critical check turns readiness 503; a failing non-critical one only turns the status to
        ``warn``. ``name`` is the component, e.g. ``"database"``; it is reported as
        ``"database:responseTime"``.
        """
        if not _NAME.fullmatch(name):
            raise ValueError(f"check name {name!r} must be letters, digits, '_', '.' or '-', e.g. 'database'")
        if name in self._checks:
            raise ValueError(f"a check named {name!r} is already registered")
        if not callable(func):
            raise TypeError("func must be an async callable taking no arguments")
        if timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self._checks[name] = HealthCheck(name, func, timeout, critical)
        self._cached = None

    def check(
        self, name: str, *, timeout: float = 1.0, critical: bool = True
    ) -> Callable[[CheckFunc], CheckFunc]:
        """Decorator form of :meth:`add_check`."""

        def register(func: CheckFunc) -> CheckFunc:
            self.add_check(name, func, timeout=timeout, critical=critical)
            return func

        return register

    def begin_shutdown(self) -> None:
        """Turn readiness 503 from now on: the process is draining."""
        self.shutting_down = True

    async def readiness(self) -> HealthReport:
        """Run (or reuse recent results of) every check. Concurrent callers share one run."""
        if self.shutting_down:
            return HealthReport("fail", (CheckResult("process", "fail", 0.0, _now(), "shutting down"),))
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run_checks())
        # shield: a probe that gives up must not cancel the run other probes are waiting for.
        return await asyncio.shield(self._running)

    async def _run_checks(self) -> HealthReport:
        results = await asyncio.gather(*(self._run_one(check) for check in self._checks.values()))
        if any(r.status == "fail" and self._checks[r.name].critical for r in results):
            status: Status = "fail"
        elif any(r.status != "pass" for r in results):
            status = "warn"
        else:
            status = "pass"
        report = HealthReport(status, tuple(results))
        self._cached = (time.monotonic(), report)
        if self.on_report is not None:
            self.on_report(report)
        return report

    @staticmethod
    async def _run_one(check: HealthCheck) -> CheckResult:
        started = time.perf_counter()
        stamp = _now()
        try:
            async with asyncio.timeout(check.timeout):
                outcome = await check.func()
        except TimeoutError:
            return CheckResult(
                check.name, "fail", time.perf_counter() - started, stamp, f"timed out after {check.timeout}s"
            )
        except Exception as exc:
            output = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return CheckResult(check.name, "fail", time.perf_counter() - started, stamp, output)
        output = outcome if isinstance(outcome, str) else ""
        return CheckResult(check.name, "pass", time.perf_counter() - started, stamp, output)

    # -- endpoints ---------------------------------------------------------------------------------

    async def live_endpoint(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "pass", "pid": os.getpid()}, media_type=HEALTH_JSON)

    async def ready_endpoint(self, request: Request) -> JSONResponse:
        report = await self.readiness()
        body: dict[str, Any] = {"status": report.status}
        failing = [r.name for r in report.checks if r.status == "fail"]
        if failing:
            body["failing"] = failing
        return JSONResponse(body, status_code=report.http_status, media_type=HEALTH_JSON)

    async def health_endpoint(self, request: Request) -> JSONResponse:
        report = await self.readiness()
        return JSONResponse(
            report.document(service_id=self.service_id),
            status_code=report.http_status,
            media_type=HEALTH_JSON,
        )
