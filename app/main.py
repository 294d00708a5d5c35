"""The reference app: ``create_app(settings)``; ``app.main:app`` is the app made from the environment."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry

from asyncproof import monitoring
from asyncproof.app import errors
from asyncproof.app.body_limit import BodyLimit
from asyncproof.app.json_limits import validation_error
from asyncproof.app.routes import items, tasks, work
from asyncproof.app.services import Services
from asyncproof.app.settings import Settings
from asyncproof.app.warm import WarmData
from asyncproof.monitoring.types import Message, Receive, Scope, Send


class WorkerPidHeader:
    """Adds ``X-Worker-PID`` to every response, so a client sees which worker answered."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Read at each request, not once: a forked worker has its own pid.
        header = (b"x-worker-pid", str(os.getpid()).encode())

        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_pid)


def create_app(settings: Settings | None = None, *, registry: CollectorRegistry | None = None) -> FastAPI:
    """The app for ``settings`` (default: from the environment). ``registry``: where its metrics go
    (default: prometheus_client's global one), for tests that build several apps in one process."""
    settings = settings or Settings()
    warm = WarmData(settings.warm_data_mb)
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start(app.state.asyncproof)
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="asyncproof reference app",
        version="0.1.0",
        description="Every way of running slow work in FastAPI, instrumented with asyncproof's monitoring.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.settings = settings
    errors.add_handlers(app)  # dependency outages answer 503 with Retry-After, never 500
    # 422s quote an excerpt of the input, never the whole of it (FastAPI's own handler echoes it all)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(work.router)
    app.include_router(tasks.router)
    app.include_router(items.router)

    @app.get("/info", tags=["info"])
    async def info() -> dict[str, Any]:
        """This worker: pid, task store, warm data set."""
        return {
            "pid": os.getpid(),
            "task_store": settings.task_store,
            "database": settings.sqlalchemy_url.split("://", 1)[0],
            "cache": "redis" if settings.redis_url else "local",
            "warm_data": warm.describe(),
            "maintenance_runs_here": services.maintenance.runs if hasattr(services, "maintenance") else 0,
        }

    # Innermost: a refused body is still answered with the pid, the request id and counted.
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(WorkerPidHeader)
    monitoring.instrument(
        app,
        registry=registry,
        request_id_header=settings.request_id_header or None,
        metrics_port=settings.metrics_port or None,
        metrics_host=settings.metrics_host,
    )
    return app


def __getattr__(name: str) -> Any:
    # `app.main:app` for Gunicorn and Uvicorn, made on first access so that importing this module
    # (tests, the process pool's children) does not build an app from the environment.
    if name == "app":
        made = globals()["app"] = create_app()
        return made
    raise AttributeError(name)
