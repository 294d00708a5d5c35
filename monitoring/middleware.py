"""Pure ASGI middleware: RED metrics, request id, Server-Timing, the built-in endpoints, the lifespan hooks.

The hot path keeps to what a request cannot avoid: two clock reads, one small object whose bound
methods wrap ``send`` and ``receive``, and one tuple appended to the recorder's buffer (see
:mod:`monitoring.recorder`). Request ids and Server-Timing are opt-in: they cost more than all of that
together (see the README's figures).
``/metrics`` and the health endpoints are answered here, from a dict keyed by path, rather than by
routes at the front of the router, which every other request would have to try first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from time import perf_counter
from typing import TYPE_CHECKING

from monitoring.contract import CLIENT_CLOSED_REQUEST, OTHER_METHOD, STANDARD_METHODS, UNMATCHED_ROUTE
from monitoring.request_id import _current, new_request_id, safe_request_id
from monitoring.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from monitoring.instrumentation import Instrumentation

access_logger = logging.getLogger("asyncproof.access")


class _Exchange:
    """One request in flight. Its bound ``send`` and ``receive`` wrap the server's.

    A slotted object and two bound methods cost fewer allocations per request than closures over
    the same state (a function object each, plus a cell per captured variable).
    """

    __slots__ = (
        "active",
        "disconnected",
        "extra",
        "finished",
        "method",
        "server_receive",
        "server_send",
        "server_timing",
        "start",
        "status",
    )
    active: dict[str, int]  # the recorder's in-flight count per method
    disconnected: bool
    extra: list[tuple[bytes, bytes]] | None  # response headers to add
    finished: float  # perf_counter() when the last body message went to the server; 0.0 until then
    method: str
    server_receive: Receive
    server_send: Send
    server_timing: bool
    start: float
    status: int

    def send(self, message: Message) -> Awaitable[None]:
        # A plain function handing back the server's awaitable: no coroutine of ours per message.
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            extra = self.extra
            if self.server_timing:
                timing = (b"server-timing", b"app;dur=%.3f" % ((perf_counter() - self.start) * 1000))
                extra = [*extra, timing] if extra else [timing]
            if extra:
                message["headers"] = [*message.get("headers", ()), *extra]
        elif kind != "http.response.trailers" and not message.get("more_body", False):
            # The last body message, handed to the server now: the request is over for the client,
            # whatever the app (BackgroundTasks) does next.
            self.finished = perf_counter()
            self.active[self.method] -= 1
        return self.server_send(message)

    async def receive(self) -> Message:
        message = await self.server_receive()
        if message["type"] == "http.disconnect" and not self.finished:
            self.disconnected = True
        return message


class InstrumentationMiddleware:
    def __init__(self, app: ASGIApp, *, instrumentation: Instrumentation) -> None:
        self.app = app
        self.instrumentation = instrumentation
        self.buffer_append = instrumentation.recorder.buffer.append
        self.active = instrumentation.recorder.active
        self.header = instrumentation.request_id_header
        self.server_timing = instrumentation.server_timing
        self.access_log = instrumentation.access_log
        self.endpoints = instrumentation.endpoints()
        self.excluded = instrumentation.excluded_paths
        self.special = self.excluded | self.endpoints.keys()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        app = self.app
        if scope["path"] in self.special:
            app = self.endpoints.get(scope["path"], app)
            if scope["path"] in self.excluded:
                await app(scope, receive, send)
                return

        exchange = _Exchange()
        exchange.start = start = perf_counter()
        method = scope["method"]
        if method not in STANDARD_METHODS:
            method = OTHER_METHOD
        exchange.method = method
        exchange.active = active = self.active
        active[method] += 1
        exchange.status = 0
        exchange.finished = 0.0
        exchange.disconnected = False
        exchange.server_send = send
        exchange.server_receive = receive
        exchange.server_timing = self.server_timing
        header = self.header
        token = None
        if header is None:
            exchange.extra = None
        else:
            request_id = None
            for name, value in scope["headers"]:
                if name == header:
                    if safe_request_id(value) is not None:
                        request_id = value
                    break
            if request_id is None:
                request_id = new_request_id()
            token = _current.set(request_id)
            exchange.extra = [(header, request_id)]
        root_path = scope.get("root_path", "")

        try:
            await app(scope, exchange.receive, exchange.send)
        except BaseException:
            if not exchange.finished:
                exchange.status = 500
            raise
        finally:
            status = exchange.status
            finished = exchange.finished
            if not finished:
                finished = perf_counter()
                active[method] -= 1
                if not status:  # the app returned without starting a response
                    status = 500
            if exchange.disconnected:  # the client left before the response was complete, as nginx's 499
                status = CLIENT_CLOSED_REQUEST
            if app is not self.app:
                route = scope["path"]
            else:
                # The matched route's template, never the raw path; under a Mount, prefixed by the
                # part of root_path the Mount added.
                route = getattr(scope.get("route"), "path", None)
                if route is None:
                    route = UNMATCHED_ROUTE
                else:
                    mounted: str = scope.get("root_path", "")
                    if mounted != root_path and mounted.startswith(root_path):
                        route = mounted[len(root_path) :] + route
            self.buffer_append((method, route, status, finished - start))
            if self.access_log:
                self._log_access(scope, method, route, status, finished - start)
            if token is not None:
                _current.reset(token)

    def _log_access(self, scope: Scope, method: str, route: str, status: int, seconds: float) -> None:
        client = scope.get("client")
        access_logger.info(
            "%s %s %d",
            scope["method"],
            scope["path"],
            status,
            extra={
                "http_request_method": method,
                "url_path": scope["path"],
                "http_route": route,
                "http_response_status_code": status,
                "duration_seconds": round(seconds, 6),
                "client_address": client[0] if client else None,
            },
        )

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        instrumentation = self.instrumentation

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await instrumentation.start()
            elif message["type"] == "lifespan.shutdown":
                instrumentation.health.begin_shutdown()
            return message

        try:
            await self.app(scope, receive_wrapper, send)
        finally:
            await instrumentation.stop()
