"""Pure ASGI middleware: RED metrics, the built-in endpoints, the lifespan hooks; request ids apart.

The metrics path keeps to what a request cannot avoid: two clock reads, one small object whose bound
methods wrap ``send`` and ``receive``, one count of the request's start and one duration appended to
the recorder's list for its label set (see :mod:`monitoring.recorder`). Measured under Valgrind, each
of these is a few hundred instructions; a bare FastAPI request is about 400,000.
Request ids and Server-Timing are a second middleware, outside this one, added only when asked for:
they cost more than all of the above together (see the README's figures).
``/metrics`` and the health endpoints are answered here, from a dict keyed by path, rather than by
routes at the front of the router, which every other request would have to try first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute, Host, Mount

from asyncproof.monitoring.contract import CLIENT_CLOSED_REQUEST, OTHER_METHOD, UNMATCHED_ROUTE
from asyncproof.monitoring.request_id import _current, new_request_id, safe_request_id
from asyncproof.monitoring.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from asyncproof.monitoring.instrumentation import Instrumentation

access_logger = logging.getLogger("asyncproof.access")
log = logging.getLogger(__name__)


class _Exchange:
    """One request in flight. Its bound ``send`` and ``receive`` wrap the server's.

    A small object and two bound methods cost fewer allocations per request than closures over the
    same state (a function object each, plus a cell per captured variable). The defaults live on
    the class, so that a new exchange only needs the server's two callables (set by the caller: an
    ``__init__`` would be one more Python call per request).
    """

    status = 0  # from http.response.start; 0 until then
    finished = 0.0  # perf_counter() when the last response message went to the server; 0.0 until then
    disconnected = False  # the client left before the response was complete

    server_send: Send
    server_receive: Receive

    def send(self, message: Message) -> Awaitable[None]:
        # A plain function handing back the server's awaitable: no coroutine of ours per message.
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif "more_body" not in message or not message["more_body"]:
            # The last body message (or trailers, or a pathsend), handed to the server now: the
            # request is over for the client, whatever the app (BackgroundTasks) does next.
            self.finished = perf_counter()
        return self.server_send(message)

    async def receive(self) -> Message:
        message = await self.server_receive()
        if message["type"] == "http.disconnect" and not self.finished:
            self.disconnected = True
        return message


def _route_path(scope: Scope) -> str:
    """The path below ``root_path``: ASGI servers put root_path at the start of ``path``."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] in ("/", ""):
        return path[len(root_path) :]
    return path


def _included_route(fastapi_scope: dict[str, Any], route: Any, template: str) -> str:
    """The template of a route reached through ``include_router(..., prefix=...)``.

    FastAPI (0.116 and later) runs such a route as the router's original APIRoute, whose path lacks
    the prefixes it was included with; the full one is in FastAPI's effective route context. The
    prefixes are put before the route's own path, so the label keeps its form (``{id:int}``).
    """
    full = getattr(fastapi_scope.get("effective_route_context"), "path_format", None)
    own = getattr(route, "path_format", None)
    if isinstance(full, str) and isinstance(own, str) and full.endswith(own):
        return full[: len(full) - len(own)] + template
    return template


def _routes_to_search(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """``routes`` with FastAPI's included routers (0.116 and later) replaced by the routes they carry
    with their prefixes, and Hosts by their routes."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            for context in contexts():
                prefixed = getattr(context, "starlette_route", None)  # set for Mounts, not for routes
                if prefixed is not None:
                    yield prefixed
        elif isinstance(route, Host):
            yield from _routes_to_search(route.routes)
        else:
            yield route


def _mount_chain(routes: Iterable[BaseRoute], added: str) -> tuple[str, Mount] | None:
    """The templates of the Mounts that matched ``added`` (the part of ``root_path`` they added),
    nested ones included — ``/t/{tenant}`` for ``/t/acme``, never the raw values — and the innermost
    of them. The first Mount that matches wins, as in Starlette's router."""
    for route in _routes_to_search(routes):
        if isinstance(route, Mount):
            match = route.path_regex.match(added + "/")
            if match is not None:
                rest = match.group("path").rstrip("/")
                if not rest:
                    return route.path, route
                inner = _mount_chain(route.routes, "/" + rest)
                if inner is not None:
                    return route.path + inner[0], inner[1]
    return None


class InstrumentationMiddleware:
    """Metrics, the built-in endpoints and the lifespan hooks of one :class:`Instrumentation`.

    :func:`monitoring.instrument` adds it, and :class:`RequestIdMiddleware` outside it when request
    ids or Server-Timing are enabled; an app composed by hand needs both, in that order.
    """

    def __init__(self, app: ASGIApp, *, instrumentation: Instrumentation) -> None:
        self.app = app
        self.instrumentation = instrumentation
        recorder = instrumentation.recorder
        self.started = recorder.started
        self.pending = recorder.pending
        self.access_log = instrumentation.access_log
        self.endpoints = instrumentation.endpoints()
        self.excluded = instrumentation.excluded_paths
        self.special = self.excluded | self.endpoints.keys()
        # raw part of root_path the Mounts added -> (their templates, the innermost), or None
        self._mount_chains: dict[str, tuple[str, Mount] | None] = {}
        # The app whose routes give Mounts their templates: the one instrument() was given, else the
        # one this middleware wraps, else the one the lifespan scope names.
        self._routed_app: Any = instrumentation.app or (app if hasattr(app, "routes") else None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        app = self.app
        root_path = scope.get("root_path", "")  # set by the server (behind a proxy) or an outer Mount
        if scope["path"] in self.special or (root_path and _route_path(scope) in self.special):
            path = _route_path(scope)
            app = self.endpoints.get(path, app)  # a built-in endpoint sets scope["route"]
            if path in self.excluded:
                await app(scope, receive, send)
                return

        # Every line below runs for every request: it is written for the fewest bytecodes, which is
        # what a request pays for (see benchmarks/overhead.py).
        exchange = _Exchange()
        exchange.server_send = send
        exchange.server_receive = receive
        method = scope["method"]
        try:
            self.started[method] += 1  # the standard methods are its keys
        except KeyError:
            method = OTHER_METHOD
            self.started[method] += 1
        start = perf_counter()
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
                if not status:  # the app returned without starting a response
                    status = 500
            if exchange.disconnected:  # the client left before the response was complete, as nginx's 499
                status = CLIENT_CLOSED_REQUEST
            matched: Any = scope.get("route")
            try:
                route = matched.path  # the matched route's template, never the raw path
            except AttributeError:  # no route matched, or one without a template (Host)
                route = UNMATCHED_ROUTE
            else:
                if scope.get("fastapi"):  # FastAPI's per-request state: set for included routers
                    route = _included_route(scope["fastapi"], matched, route)
            if "app_root_path" in scope:  # a Mount matched (Starlette sets app_root_path then)
                route = self._mounted_route(scope, matched, route, root_path)
            self.pending[method, route, status].append(finished - start)
            if self.access_log:
                self._log_access(scope, method, route, status, finished - start)

    def _mounted_route(self, scope: Scope, matched: Any, template: str, root_path: str) -> str:
        """The route label when a Mount matched: the Mounts' templates, then the template of the route
        matched inside. A root_path that was there when the request reached this app is not part of
        it. A mounted app without routes of its own (StaticFiles) is labelled with its Mount's
        template; a mounted router that found no route, ours or the one this app is mounted in,
        gives ``unmatched``. (FastAPI's router leaves no ``scope["route"]`` for a Mount.)"""
        if isinstance(matched, Mount) and matched.routes:
            return UNMATCHED_ROUTE
        added = scope.get("root_path", "")[len(root_path) :]
        if added in self._mount_chains:
            found = self._mount_chains[added]
        elif self._routed_app is None:  # composed by hand, no lifespan run yet: the raw prefix
            if isinstance(matched, Mount):
                return added or "/"
            bad = template is UNMATCHED_ROUTE or not isinstance(template, str)
            return UNMATCHED_ROUTE if bad else added + template
        else:
            try:
                found = _mount_chain(getattr(self._routed_app, "routes", ()), added) if added else None
            except Exception:  # a router of another make: its request must still be counted
                log.exception("cannot find the Mounts of %r among the app's routes", added)
                found = None
            if len(self._mount_chains) >= 1024:  # raw prefixes carry path parameters: keep it bounded
                self._mount_chains.clear()
            self._mount_chains[added] = found
        if found is None:  # no Mount of this app: the root_path came from outside
            return template if isinstance(template, str) else UNMATCHED_ROUTE
        prefix, mount = found
        if matched is None or isinstance(matched, Mount):  # the mounted app answered by itself
            return UNMATCHED_ROUTE if mount.routes else prefix or "/"
        if template is UNMATCHED_ROUTE or not isinstance(template, str):
            return UNMATCHED_ROUTE
        return prefix + template

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
        if self._routed_app is None:
            self._routed_app = scope.get("app")

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


class RequestIdMiddleware:
    """Request ids and ``Server-Timing``; placed outside :class:`InstrumentationMiddleware`, so the
    request's id is set for everything the app (and the access log) does."""

    def __init__(self, app: ASGIApp, *, header: bytes | None, server_timing: bool) -> None:
        self.app = app
        self.header = header
        self.server_timing = server_timing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        extra: list[tuple[bytes, bytes]] = []
        token = None
        header = self.header
        if header is not None:
            request_id = None
            for name, value in scope["headers"]:
                if name == header:
                    if safe_request_id(value) is not None:
                        request_id = value
                    break
            if request_id is None:
                request_id = new_request_id()
            token = _current.set(request_id)
            extra.append((header, request_id))
        server_timing = self.server_timing

        def send_with_headers(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), *extra]
                if server_timing:
                    headers.append((b"server-timing", b"app;dur=%.3f" % ((perf_counter() - start) * 1000)))
                message["headers"] = headers
            return send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if token is not None:
                _current.reset(token)
