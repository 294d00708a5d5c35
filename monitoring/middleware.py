"""Pure ASGI middleware: RED metrics, request id, Server-Timing, the built-in endpoints, the lifespan hooks.

The hot path keeps to what a request cannot avoid: two clock reads, one dict look-up, one wrapped
``send``, a contextvar, and one tuple appended to the recorder's buffer (see :mod:`monitoring.recorder`).
``/metrics`` and the health endpoints are answered here, from a dict keyed by path, rather than by
routes at the front of the router, which every other request would have to try first.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any

from monitoring.contract import CLIENT_CLOSED_REQUEST, OTHER_METHOD, STANDARD_METHODS, UNMATCHED_ROUTE
from monitoring.request_id import _current, accept_request_id, new_request_id
from monitoring.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from monitoring.instrumentation import Instrumentation

access_logger = logging.getLogger("asyncproof.access")


def route_template(scope: Scope, root_path: str) -> str:
    """The matched route's template, prefixed by any ``Mount`` it sits under; never the raw path."""
    route = scope.get("route")
    path: str | None = getattr(route, "path", None)
    if path is None:
        return UNMATCHED_ROUTE
    mounted: str = scope.get("root_path", "")
    if mounted != root_path and mounted.startswith(root_path):
        return mounted[len(root_path) :] + path
    return path


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

        start = perf_counter()
        method = scope["method"]
        if method not in STANDARD_METHODS:
            method = OTHER_METHOD
        root_path = scope.get("root_path", "")
        active = self.active
        active[method] += 1
        # [status, finished, disconnected]: one list rather than three closure cells, which every
        # request would pay for.
        state: list[Any] = [0, 0.0, False]
        token = None
        extra: list[tuple[bytes, bytes]] = []
        if self.header is not None:
            request_id = self._request_id(scope["headers"])
            token = _current.set(request_id)
            extra.append((self.header, request_id))
        server_timing = self.server_timing

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not state[1]:
                state[2] = True
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state[0] = message["status"]
                if server_timing:
                    extra.append((b"server-timing", b"app;dur=%.3f" % ((perf_counter() - start) * 1000)))
                if extra:
                    message["headers"] = [*message.get("headers", ()), *extra]
            elif not message.get("more_body", False) and message["type"] != "http.response.trailers":
                await send(message)
                # The last body byte is out: the request is over for the client, whatever the app
                # (BackgroundTasks) does next.
                state[1] = perf_counter()
                active[method] -= 1
                return
            await send(message)

        try:
            await app(scope, receive_wrapper, send_wrapper)
        except BaseException:
            if not state[1]:
                state[0] = 500
            raise
        finally:
            status, finished, disconnected = state
            if not finished:
                finished = perf_counter()
                active[method] -= 1
                if not status:  # the app returned without starting a response
                    status = 500
            if disconnected:  # the client left before the response was complete, as nginx's 499
                status = CLIENT_CLOSED_REQUEST
            route = route_template(scope, root_path) if app is self.app else scope["path"]
            self.buffer_append((method, route, status, finished - start))
            if self.access_log:
                self._log_access(scope, method, route, status, finished - start)
            if token is not None:
                _current.reset(token)

    def _request_id(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        header = self.header
        for name, value in headers:
            if name == header:
                if accept_request_id(value):
                    return value
                break
        return new_request_id()

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
