"""``instrument(app)``: the one call that adds metrics, health and request ids to an app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from types import FrameType
from typing import Any

import prometheus_client.values
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from asyncproof.monitoring import stalls
from asyncproof.monitoring.executors import watch_executor
from asyncproof.monitoring.exposition import Exposition, MetricsServer
from asyncproof.monitoring.exposition_process import ExpositionKeeper
from asyncproof.monitoring.health import Health, HealthReport
from asyncproof.monitoring.metrics import Metrics
from asyncproof.monitoring.middleware import InstrumentationMiddleware, RequestIdMiddleware
from asyncproof.monitoring.multiprocess import multiprocess_dir
from asyncproof.monitoring.options import Options
from asyncproof.monitoring.runtime import ProcessCollector, RuntimeSampler
from asyncproof.monitoring.stalls import StallWatchdog
from asyncproof.monitoring.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("asyncproof.monitoring")


class Instrumentation:
    """The options, metrics, health registry and runtime sampler of one instrumented app.

    Made by :func:`instrument`; use it to register readiness checks (``add_check``) and the pools to
    watch (``watch_executor``), and to hand ``metrics`` to the cache, database and task helpers.
    """

    def __init__(self, options: Options | None = None, /, **kwargs: Any) -> None:
        if options is None:
            options = Options(**kwargs)
        elif kwargs:
            raise TypeError("pass the options either as an Options object or as keywords, not both")
        self.options = options
        self.multiprocess_dir = multiprocess_dir()
        if self.multiprocess_dir and not _writes_multiprocess_files():
            raise RuntimeError(
                "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported, so metrics would "
                "stay in this process; set it before the app is imported (asyncproof.monitoring.gunicorn "
                "does this when the Gunicorn config imports it)"
            )
        # Every app instrumented with the same registry shares its metrics and recorder.
        self.metrics = Metrics(
            options.registry, http_buckets=options.buckets, http_labels=options.http_labels
        )
        self.registry = self.metrics.registry
        # The instrumented app, set by instrument(): its routes give Mount prefixes their templates.
        self.app: Starlette | None = None
        if not self.multiprocess_dir:
            _install_process_collector(self.registry)
        self.metrics_path = options.metrics_path
        self.health_path = options.health_path
        self.metrics_port = options.metrics_port
        self.request_id_header = (
            options.request_id_header.lower().encode("latin-1") if options.request_id_header else None
        )
        self.health = Health(cache_seconds=options.readiness_cache_seconds, service_id=options.service_id)
        self.health.on_report = self._record_health
        self.recorder = self.metrics.http_recorder
        self.sampler = RuntimeSampler(
            self.metrics,
            self.recorder,
            interval=options.loop_lag_interval,
            flush_interval=options.flush_interval,
            report_interval=options.report_interval,
            multiprocess_dir=self.multiprocess_dir,
        )
        self.exposition = Exposition(self.registry, self.multiprocess_dir)
        self.metrics_server: MetricsServer | None = None
        self.exposition_keeper: ExpositionKeeper | None = None
        self.watchdog: StallWatchdog | None = None
        """The stall watchdog of the loop this app runs on, while it runs (``stall_threshold``)."""
        self._previous_sigterm: Any = None

    def _record_health(self, report: HealthReport) -> None:
        for result in report.checks:
            self.metrics.health_check_status.labels(result.name).set(1 if result.status == "pass" else 0)

    def add_check(self, name: str, func: Any, *, timeout: float = 1.0, critical: bool = True) -> None:
        """Register an async readiness check; see :meth:`monitoring.health.Health.add_check`."""
        self.health.add_check(name, func, timeout=timeout, critical=critical)

    def watch_executor(self, executor: Executor, name: str) -> None:
        """Report ``executor``'s pending work and busy workers; see :func:`monitoring.watch_executor`."""
        watch_executor(executor, name, self.metrics)

    def endpoints(self) -> dict[str, ASGIApp]:
        """The built-in endpoints by path; the middleware answers them before the app's router."""
        functions: dict[str, Callable[[Request], Awaitable[Response]]] = {
            f"{self.health_path}/live": self.health.live_endpoint,
            f"{self.health_path}/ready": self.health.ready_endpoint,
            self.health_path: self.health.health_endpoint,
        }
        if self.metrics_port is None:
            functions[self.metrics_path] = self.metrics_endpoint
        return {path: GetEndpoint(path, func) for path, func in functions.items()}

    async def metrics_endpoint(self, request: Request) -> Response:
        try:
            self.sampler.sample_now()
        except Exception:  # the scrape still answers, with what was flushed before
            log.exception("asyncproof could not flush before a scrape")
        body, content_type = await self.exposition.render_async(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    async def start(self) -> None:
        """Start the runtime sampler (and the metrics port); the middleware calls this at lifespan startup."""
        self.health.shutting_down = False
        self.sampler.start()
        if self.options.stall_threshold is not None and self.watchdog is None:
            try:  # the app runs without naming its stalls rather than not at all
                self.watchdog = stalls.watch(self.metrics, self.options.stall_threshold)
            except Exception:
                log.exception("asyncproof could not start its stall watchdog")
        if self.metrics_port is not None:
            await self._start_metrics_port(self.metrics_port)
        self._chain_sigterm()

    async def _start_metrics_port(self, port: int) -> None:
        host = self.options.metrics_host
        if self.multiprocess_dir:
            # One exposition process per deployment answers the port, never a serving worker; each
            # worker keeps it running (asyncproof.monitoring.exposition_process).
            if self.exposition_keeper is None:
                self.exposition_keeper = ExpositionKeeper(
                    self.multiprocess_dir, host, port, interval=self.options.report_interval
                )
                self.exposition_keeper.start()
                # Serve once the port does (or this deployment knows why it cannot).
                await asyncio.to_thread(self.exposition_keeper.wait_checked)
        elif self.metrics_server is None:
            self.metrics_server = MetricsServer(
                self.exposition, host, port, before_render=self.recorder.flush
            )

    async def stop(self) -> None:
        """Stop what :meth:`start` started and flush what is buffered."""
        self.health.begin_shutdown()
        if self.watchdog is not None:
            stalls.unwatch(self.watchdog, self.metrics)
            self.watchdog = None
        await self.sampler.stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if self.exposition_keeper is not None:
            # off the loop: the keeper's thread may be busy starting the exposition process
            await asyncio.to_thread(self.exposition_keeper.stop)
            self.exposition_keeper = None
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _chain_sigterm(self) -> None:
        # Uvicorn (also under Gunicorn) drains on SIGTERM but runs the lifespan shutdown only once
        # in-flight requests are done. Readiness must turn 503 as the drain starts, so mark it first
        # and hand the signal on. Only where a server installed a handler: never change what SIGTERM
        # does to a process that kept the default.
        if threading.current_thread() is not threading.main_thread() or self._previous_sigterm is not None:
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.health.begin_shutdown()
            previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
        self._previous_sigterm = previous


class GetEndpoint:
    """A ``Request -> Response`` function as an ASGI app that answers GET and HEAD, 405 otherwise."""

    def __init__(self, path: str, func: Callable[[Request], Awaitable[Response]]) -> None:
        self.path = path  # its route label when the built-in endpoints are not excluded from the metrics
        self.func = func

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        if scope["method"] in ("GET", "HEAD"):
            response = await self.func(Request(scope, receive))
        else:
            response = JSONResponse(
                {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": "GET, HEAD"}
            )
        await response(scope, receive, send)


def _writes_multiprocess_files() -> bool:
    return getattr(prometheus_client.values.ValueClass, "__name__", "") != "MutexValue"


def _install_process_collector(registry: CollectorRegistry) -> None:
    # Ours carries a pid label and the thread count, like multiprocess mode; it takes the place of
    # prometheus_client's default one, which exports the same names.
    from prometheus_client import PROCESS_COLLECTOR

    with contextlib.suppress(KeyError):
        registry.unregister(PROCESS_COLLECTOR)
    # A second instrument() on the same registry finds it there already.
    with contextlib.suppress(ValueError):
        registry.register(ProcessCollector())


def instrument(app: Starlette, options: Options | None = None, /, **kwargs: Any) -> Instrumentation:
    """Instrument a FastAPI or Starlette app: metrics middleware, ``/metrics``, health endpoints.

    Call before the app starts serving. The options are those of :class:`Options`, given as keywords
    (``instrument(app, metrics_path="/internal/metrics")``) or as an ``Options`` object. Any number of
    apps may be instrumented in one process; those with the same registry (by default the global
    one) share their series. Returns the :class:`Instrumentation`, also stored as
    ``app.state.asyncproof``.
    """
    if not isinstance(app, Starlette):
        raise TypeError(f"instrument() takes a FastAPI or Starlette app, got {type(app).__name__}")
    instrumentation = Instrumentation(options, **kwargs)
    instrumentation.app = app
    app.add_middleware(InstrumentationMiddleware, instrumentation=instrumentation)
    if instrumentation.request_id_header is not None or instrumentation.options.server_timing:
        # added last, so it runs first: the id is set before the metrics middleware starts
        app.add_middleware(
            RequestIdMiddleware,
            header=instrumentation.request_id_header,
            server_timing=instrumentation.options.server_timing,
        )
    app.state.asyncproof = instrumentation
    return instrumentation
