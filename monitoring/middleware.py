"""Pure ASGI middleware: RED metrics, the built-in endpoints, the lifespan hooks; request ids apart.

The metrics path keeps to what a request cannot avoid: two clock reads, one small object whose bound
methods wrap ``send`` and ``receive``, one append of the request's method (for the in-flight gauge)
and two additions to its series in shared memory (see :mod:`monitoring.recorder`). Measured under
Valgrind, each of these is a few hundred instructions; a bare FastAPI request is about 400,000.
Request ids and Server-Timing are a second middleware, outside this one, added only when asked for:
they cost more than all of the above together (see the README's figures).
``/metrics`` and the health endpoints are answered here, from a dict keyed by path, rather than by
routes at the front of the router, which every other request would have to try first.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left
from collections.abc import Awaitable, Iterable
from time import perf_counter
from typing import TYPE_CHECKING

from asyncproof.monitoring.contract import CLIENT_CLOSED_REQUEST, OTHER_METHOD, UNMATCHED_ROUTE
from asyncproof.monitoring.options import OTHER_VALUE
from asyncproof.monitoring.recorder import HttpRecorder
from asyncproof.monitoring.request_id import _current, new_request_id, safe_request_id
from asyncproof.monitoring.routes import ROUTER_SETS_ROUTE, RouteLabels, included_route, route_path
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
    ``__init__`` would be one more Python call per request, and keywords to a C-level one, such as
    SimpleNamespace's, cost twice as long as the two stores).
    """

    status = 0  # from http.response.start; 0 until then (499 once the client left: see _Disconnected)
    finished = 0.0  # perf_counter() when the last response message went to the server; 0.0 until then
    disconnected: type[_Exchange]  # the class an exchange takes when its client leaves early

    server_send: Send
    server_receive: Receive

    def send(self, message: Message) -> Awaitable[None]:
        # A plain function handing back the server's awaitable: no coroutine of ours per message.
        if "status" in message:  # http.response.start, the only response message with a status
            self.status = message["status"]
        elif "more_body" not in message or not message["more_body"]:
            # The last body message (or trailers, or a pathsend), handed to the server now: the
            # request is over for the client, whatever the app (BackgroundTasks) does next.
            self.finished = perf_counter()
        return self.server_send(message)

    async def receive(self) -> Message:
        message = await self.server_receive()
        if message["type"] == "http.disconnect" and not self.finished:
            # The client left before the response was complete: from now on the exchange's status
            # reads 499, whatever the app sends, with nothing for the request path to check.
            self.__class__ = self.disconnected
        return message

    def close(self) -> None:
        """The app returned (or raised) without completing its response."""


class _ClientClosed:
    """``status`` of an exchange whose client left early: nginx's 499, whatever is set after."""

    def __get__(self, exchange: object, owner: type | None = None) -> int:
        return CLIENT_CLOSED_REQUEST

    def __set__(self, exchange: object, status: int) -> None:
        pass


def _with_disconnected(exchange: type[_Exchange]) -> type[_Exchange]:
    """``exchange`` with its ``disconnected`` class: the same, with a status that reads 499."""
    exchange.disconnected = type(f"{exchange.__name__}Disconnected", (exchange,), {"status": _ClientClosed()})
    return exchange


_with_disconnected(_Exchange)


class _ForegroundExchange(_Exchange):
    """An exchange that stops counting as in flight once its response is complete, while the app
    may still run its BackgroundTasks (``background_tasks_in_flight=False``)."""

    # set on the subclass the middleware makes per method
    responded: dict[str, int]
    method: str

    def send(self, message: Message) -> Awaitable[None]:
        before = self.finished
        sent = _Exchange.send(self, message)
        if self.finished and not before:
            self.responded[self.method] += 1
        return sent

    def close(self) -> None:
        self.responded[self.method] += 1


class _Paths(frozenset[str]):
    """Paths plus regular expressions that a whole path may match (``exclude_patterns``)."""

    patterns: tuple[re.Pattern[str], ...] = ()

    def __contains__(self, path: object) -> bool:
        if frozenset.__contains__(self, path):
            return True
        return isinstance(path, str) and any(p.fullmatch(path) for p in self.patterns)


def _paths(paths: Iterable[str], patterns: tuple[re.Pattern[str], ...]) -> frozenset[str]:
    if not patterns:
        return frozenset(paths)  # the C-level lookup, as cheap as a set gets
    found = _Paths(paths)
    found.patterns = patterns
    return found


class InstrumentationMiddleware:
    """Metrics, the built-in endpoints and the lifespan hooks of one :class:`Instrumentation`.

    :func:`monitoring.instrument` adds it, and :class:`RequestIdMiddleware` outside it when request
    ids or Server-Timing are enabled; an app composed by hand needs both, in that order.
    """

    def __init__(self, app: ASGIApp, *, instrumentation: Instrumentation) -> None:
        self.app = app
        self.instrumentation = instrumentation
        options = instrumentation.options
        self.recorder: HttpRecorder = instrumentation.recorder
        self.starts = self.recorder.started.append  # the in-flight count: one C-level call per request
        self.series = self.recorder.series
        self.bounds = self.recorder.bounds
        self.access_log = options.access_log
        self.extra = tuple(options.extra_labels) or None
        self.foreground = not options.background_tasks_in_flight
        # one check per request for all three
        self.plain = self.extra is None and not self.access_log and not self.foreground
        # The exchange class per method (its keys are the methods we label): _Exchange, or one that
        # knows its method and counts the response's end (so nothing per request has to check which).
        self.exchanges: dict[str, type[_Exchange]] = dict.fromkeys(self.recorder.responded, _Exchange)
        if self.foreground:
            responded = self.recorder.responded
            for method in self.exchanges:
                attributes = {"responded": responded, "method": method}
                self.exchanges[method] = _with_disconnected(
                    type("_ForegroundExchange", (_ForegroundExchange,), attributes)
                )
        self.endpoints = instrumentation.endpoints()
        self.excluded = _paths(options.excluded, options.patterns)
        self.special = _paths(options.excluded | self.endpoints.keys(), options.patterns)
        self.special_endings = ("",) if options.patterns else tuple(self.special)
        # Our exclusions are our endpoints' paths, unless the caller chose them.
        self.default_exclusions = options.exclude_paths is None
        self.option_of = {options.metrics_path: "metrics_path"}
        self.routes = RouteLabels(instrumentation.app or (app if hasattr(app, "routes") else None))
        self.label_attribute = self.routes.attribute
        self.routes.walk()
        instrumentation.sampler.route_walks.append(self.routes.walk)
        self._faults: set[tuple[str, str]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        app = self.app
        # root_path: set by the server (behind a proxy) or an outer Mount
        # Our endpoints and the excluded paths, below any root_path: only paths that end like one of
        # them (or every path, when there are exclude_patterns) take the full look.
        if scope["path"].endswith(self.special_endings) and (
            scope["path"] in self.special or route_path(scope) in self.special
        ):
            path = route_path(scope)
            endpoint = self.endpoints.get(path)  # a built-in endpoint sets scope["route"]
            owned = endpoint is not None and self.routes.app_owns(
                path, self.option_of.get(path, "health_path")
            )
            if endpoint is not None and not owned:
                app = endpoint
            if path in self.excluded and not (owned and self.default_exclusions):
                await app(scope, receive, send)
                return

        # Every line below runs for every request: it is written for the fewest bytecodes, which is
        # what a request pays for (see benchmarks/overhead.py).
        method = scope["method"]
        try:
            exchange = self.exchanges[method]()
        except KeyError:  # not a standard method
            method = OTHER_METHOD
            exchange = self.exchanges[method]()
        exchange.server_send = send
        exchange.server_receive = receive
        self.starts(method)
        start = perf_counter()
        try:
            await app(scope, exchange.receive, exchange.send)
        except BaseException:
            if not exchange.finished:
                exchange.status = 500
            raise
        finally:
            if not exchange.finished:
                exchange.finished = perf_counter()
                exchange.close()
                if not exchange.status:  # the app returned without starting a response
                    exchange.status = 500
            seconds = exchange.finished - start
            try:  # a fault of ours must not reach the server: the response is the app's
                try:  # the route's label, once known to be the same for every request it serves
                    route = getattr(scope["route"], self.label_attribute)
                except (KeyError, AttributeError):  # not yet, or never: worked out for this request
                    route = self.route_label(scope)
                if self.plain:
                    # recorder.record(), inlined: the bucket's count and the sum, in shared memory
                    series = self.series[method, route, exchange.status]
                    series[bisect_left(self.bounds, seconds)] += 1.0
                    series[-1] += seconds
                else:  # extra labels, the access log, or BackgroundTasks out of flight
                    self._record(scope, method, route, exchange.status, seconds)
            except Exception as error:
                self._fault(error, method, exchange.status, seconds)

    def route_label(self, scope: Scope, *, remember: bool = True) -> str:
        """The ``http_route`` label of a request: the template of the route it matched (Mount and
        ``include_router`` prefixes included, never the raw path), or ``unmatched``. Remembered on
        the route object when it is the only way to that route (see :meth:`RouteLabels.remember`);
        ``remember=False`` for callers off the loop's thread (the stall watchdog)."""
        try:
            route: str = scope["route"].path  # the matched route's template, never the raw path
        except (KeyError, AttributeError):  # no route matched, or one without a template (Host)
            route = self._unmatched(scope)
        else:
            if scope.get("fastapi"):  # FastAPI's per-request state: set for included routers
                route = included_route(scope["fastapi"], scope["route"], route)
        if "app_root_path" in scope:  # a Mount matched (Starlette sets app_root_path then)
            route = self.routes.mounted(scope, scope.get("route"), route, scope["app_root_path"])
        if remember:
            self.routes.remember(scope.get("route"), route)
        return route

    def _unmatched(self, scope: Scope) -> str:
        if scope.get("route") is None and not ROUTER_SETS_ROUTE:  # Starlette before 1.7
            return self.routes.find_after(scope)
        return UNMATCHED_ROUTE

    def _record(self, scope: Scope, method: str, route: str, status: int, seconds: float) -> None:
        if self.extra is None:
            self.recorder.record((method, route, status), seconds)
        else:
            self.recorder.record((method, route, status, *[label(scope) for label in self.extra]), seconds)
        if self.foreground:
            self.recorder.foreground_recorded[method] += 1
        if self.access_log:
            try:  # the request is counted: a failing log line must not count it again as a fault
                self._log_access(scope, method, route, status, seconds)
            except Exception:
                log.exception("asyncproof could not write an access log line")

    def _fault(self, error: Exception, method: str, status: int, seconds: float) -> None:
        """A fault while labelling or recording: logged once per distinct error, and the request
        still counted, as ``unmatched``."""
        fault = (type(error).__name__, str(error)[:200])
        if fault not in self._faults and len(self._faults) < 100:
            self._faults.add(fault)
            log.error("asyncproof could not record a request; counted as unmatched", exc_info=error)
        key = (method, UNMATCHED_ROUTE, status, *(OTHER_VALUE for _ in self.extra or ()))
        try:
            self.recorder.record(key, seconds)
            if self.foreground:
                self.recorder.foreground_recorded[method] += 1
        except Exception as second:
            uncounted = (type(second).__name__, "uncounted")
            if uncounted not in self._faults:  # once per kind of error
                self._faults.add(uncounted)
                log.warning("asyncproof could not count a request at all: %s", second)

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
        if self.routes.app is None:
            self.routes.app = scope.get("app")
        self.routes.walk()

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:  # the app starts whatever happens to our sampler or metrics port
                    await instrumentation.start()
                except Exception:
                    log.exception("asyncproof could not start its runtime metrics; the app runs without them")
            elif message["type"] == "lifespan.shutdown":
                instrumentation.health.begin_shutdown()
            return message

        try:
            await self.app(scope, receive_wrapper, send)
        finally:
            try:
                await instrumentation.stop()
            except Exception:
                log.exception("asyncproof could not stop its runtime metrics cleanly")


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
