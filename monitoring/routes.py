"""Route labels: the template of the route a request matched, never its raw path.

A request's label is worked out here the first time its route serves one — routes reached through
``include_router(..., prefix=...)``, Mounts (their templates, nested ones included), a root_path set
by a proxy — and then kept on the route object when only one path of the app leads to it, so that
the middleware reads it with one attribute look-up after that. Here too: whether the app has a
route of its own at a path our built-in endpoints would answer.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import starlette
from starlette.routing import BaseRoute, Host, Match, Mount

from asyncproof.monitoring.contract import UNMATCHED_ROUTE
from asyncproof.monitoring.types import Scope

log = logging.getLogger("asyncproof.monitoring")

# Starlette's router sets scope["route"] from 1.7 on. Before, the route a request matched is found
# again after the response, by matching the app's routes as the router did (what the peer libraries
# do for every request); only requests that carry no route pay for it.
ROUTER_SETS_ROUTE = tuple(int(part) for part in starlette.__version__.split(".")[:2]) >= (1, 7)


class RouteConflictWarning(UserWarning):
    """The app has its own route at a path asyncproof would answer; the app's route wins."""


def route_path(scope: Scope) -> str:
    """The path below ``root_path``: ASGI servers put root_path at the start of ``path``."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] in ("/", ""):
        return path[len(root_path) :]
    return path


def included_route(fastapi_scope: dict[str, Any], route: Any, template: str) -> str:
    """The template of a route reached through ``include_router(..., prefix=...)``.

    FastAPI (0.137 and later) runs such a route as the router's original APIRoute, whose path lacks
    the prefixes it was included with; the full one is in FastAPI's effective route context. The
    prefixes are put before the route's own path, so the label keeps its form (``{id:int}``).
    """
    full = getattr(fastapi_scope.get("effective_route_context"), "path_format", None)
    own = getattr(route, "path_format", None)
    if isinstance(full, str) and isinstance(own, str) and full.endswith(own):
        return full[: len(full) - len(own)] + template
    return template


def _routes_to_search(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """``routes`` with FastAPI's included routers (0.137 and later) replaced by the Mounts they carry
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


def _inner_routes(route: Any) -> Any:
    """The routes of what a Mount (or Host) leads to: its router's, or those of the router a
    middleware wraps there (``Mount("/x", app=Middleware(router))``); ``None`` for an app that
    has none (StaticFiles) or that we cannot see into."""
    inner = getattr(route, "routes", None)
    if inner:
        return inner
    app = getattr(route, "app", None)
    for _ in range(32):  # a chain of middleware around a router
        if app is None:
            return None
        inner = getattr(app, "routes", None)
        if inner is not None:
            return inner
        app = getattr(app, "app", None)
    return None


def _leaf_routes(routes: Iterable[Any], depth: int = 0) -> Iterator[Any]:
    """Every route object a request can be matched to, once for each way of reaching it: through
    Mounts, Hosts, middleware around a mounted router and FastAPI's included routers (0.137 and
    later, whose requests carry the router's own route object)."""
    if depth > 32:
        return
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            for context in contexts():
                mount = getattr(context, "starlette_route", None)  # set for Mounts, not for routes
                if mount is not None:
                    yield from _leaf_routes(_inner_routes(mount) or (), depth + 1)
                else:
                    yield getattr(context, "original_route", None)
        elif isinstance(route, (Mount, Host)):
            yield from _leaf_routes(_inner_routes(route) or (), depth + 1)
        else:
            yield route


_labellers = itertools.count()
_NOT_CACHED = object()


def _find_template(routes: Iterable[BaseRoute], scope: Scope) -> str | None:
    """The template of the route among ``routes`` that ``scope`` matches — Mount templates
    included, a 405's route as the router picks it — or ``None``."""
    partial: str | None = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, (Mount, Host)):
            inner_routes = _inner_routes(route)  # a router behind middleware included
            if not inner_routes:  # a mounted app without routes (StaticFiles): its Mount's template
                found: str | None = getattr(route, "path", None)
            else:
                inner = _find_template(inner_routes, {**scope, **child})
                prefix = route.path if isinstance(route, Mount) else ""
                found = None if inner is None else prefix + inner
        else:
            found = getattr(route, "path", None)
        if match is Match.FULL:
            return found
        if partial is None:
            partial = found
    return partial


def _has_literal_route(routes: Iterable[BaseRoute], scope: Scope) -> bool:
    """Whether a route among ``routes`` matches ``scope``'s path without a path parameter: the app's
    own ``/health``, not a catch-all ``/{path:path}`` or a StaticFiles Mount that would take any
    path. Mounts with routes are searched by the router's own matching, for any FastAPI version."""
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:  # a route of another make that cannot match a bare scope
            continue
        if match is Match.NONE:
            continue
        if isinstance(route, Mount) or "app_root_path" in child:
            inner = getattr(route, "routes", None)
            if (
                inner
                and not child.get("path_params")
                and _has_literal_route(inner, {**scope, **child, "path": scope["path"]})
            ):
                return True
            continue
        if not child.get("path_params"):
            return True
    return False


class RouteLabels:
    """Labels that need the app's routes: Mount templates (cached per raw prefix) and which of our
    built-in paths the app has a route of its own for."""

    def __init__(self, app: Any) -> None:
        # The app whose routes give Mounts their templates: the one instrument() was given, else the
        # one the middleware wraps, else the one the lifespan scope names (set by the middleware).
        self.app = app
        # raw part of root_path the Mounts added -> (their templates, the innermost), or None
        self._mount_chains: dict[str, tuple[str, Mount] | None] = {}
        self._owned: dict[str, bool] = {}
        # Where route objects keep the label this app gives them (see remember()): a name of its own,
        # so that a route shared with another app is never read with that app's label.
        self.attribute = sys.intern(f"_asyncproof_route_{next(_labellers)}")
        self._walked_for: tuple[int, int] | None = None
        self._once: dict[int, Any] = {}  # id -> route objects of this app reached one way only
        self._owned_for: tuple[int, int] | None = None
        self._warned: set[str] = set()

    def app_owns(self, path: str, option: str) -> bool:
        """Whether the app has its own route at ``path``; checked again whenever the app's route list
        changed (routes added after ``instrument()`` count). The first time, a
        :class:`RouteConflictWarning` names the conflict and ``option``, which moves our endpoint."""
        routes = getattr(self.app, "routes", None)
        if not routes:
            return False
        signature = (id(routes), len(routes))
        if signature != self._owned_for:
            self._owned.clear()
            self._owned_for = signature
        owned = self._owned.get(path)
        if owned is None:
            scope = {"type": "http", "path": path, "root_path": "", "method": "GET", "headers": []}
            try:
                owned = _has_literal_route(routes, scope)
            except Exception:  # never let a router of another make break the request
                log.exception("cannot search the app's routes for %r", path)
                owned = False
            self._owned[path] = owned
            if owned and path not in self._warned:
                self._warned.add(path)
                message = (
                    f"the app has its own route at {path}: it answers there, not asyncproof; pass "
                    f"{option}= to instrument() to serve asyncproof's endpoint at another path"
                )
                # A Python warning (printed once by default, filterable by its category), not a log
                # record at WARNING, which apps and test suites that count log records would trip on.
                try:
                    warnings.warn(message, RouteConflictWarning, stacklevel=2)
                except Warning:  # a filter turned it into an error: a notice must never fail a request
                    log.info(message)
        return owned

    def walk(self) -> None:
        """Find the route objects of the app that only one path leads to; done again whenever the
        app's route list changed. A route object reached twice (a router included under two
        prefixes, a sub-app mounted twice) has a label per request and is never remembered."""
        routes = getattr(self.app, "routes", None)
        if routes is None:
            return
        signature = (id(routes), len(routes))
        if signature == self._walked_for:
            return
        self._walked_for = signature
        found: dict[int, list[Any]] = {}
        try:
            for route in _leaf_routes(routes):
                if route is not None:
                    found.setdefault(id(route), [route, 0])[1] += 1
        except Exception:  # a router of another make: labels are worked out per request, as before
            log.exception("cannot walk the app's routes; route labels are worked out for every request")
            found = {}
        once = {key: route for key, (route, times) in found.items() if times == 1}
        for key, route in self._once.items():
            if once.get(key) is not route:  # reached another way now: forget its label
                with contextlib.suppress(AttributeError):
                    delattr(route, self.attribute)
        self._once = once

    def remember(self, route: Any, label: str) -> None:
        """Keep ``label`` on ``route`` when only one path of the app leads to it: from then on the
        middleware reads it with one attribute look-up. Called after each label worked out in full,
        which also notices a route list that changed since the last walk."""
        if route is None:
            return
        self.walk()
        if self._once.get(id(route)) is route and label != UNMATCHED_ROUTE and isinstance(label, str):
            with contextlib.suppress(AttributeError, TypeError):  # a route class with __slots__
                setattr(route, self.attribute, label)

    def find(self, scope: Scope, root_path: str) -> str:
        """The label of a request that carries no route (Starlette before 1.7): found by matching the
        app's routes as the router did. A fault or no match gives ``unmatched``."""
        routes = getattr(self.app, "routes", None)
        if not routes:
            return UNMATCHED_ROUTE
        request = {**scope, "root_path": root_path}
        request.pop("app_root_path", None)
        request.pop("path_params", None)
        try:
            found = _find_template(routes, request)
        except Exception:  # a route of another make: the request is still counted
            log.exception("cannot match %r against the app's routes", scope.get("path"))
            found = None
        return found if isinstance(found, str) else UNMATCHED_ROUTE

    def find_after(self, scope: Scope) -> str:
        """:meth:`find` once the app has run: Mounts have added to ``root_path`` by then, and the
        root_path the request came with is one of its prefixes (``app_root_path`` when this app's own
        Mount set it, shorter or longer when the app is itself mounted in another): the first that
        finds a route wins."""
        full: str = scope.get("root_path", "")
        candidates = [scope.get("app_root_path", full)]
        candidates += [full[:end] for end in range(len(full) + 1) if end == len(full) or full[end] == "/"]
        for root_path in dict.fromkeys(candidates):  # in order, once each
            found = self.find(scope, root_path)
            if found != UNMATCHED_ROUTE:
                return found
        return UNMATCHED_ROUTE

    def _mount_chain(self, added: str) -> tuple[str, Mount] | None:
        # one look-up: the stall watchdog's thread may clear the cache between a check and a read
        cached = self._mount_chains.get(added, _NOT_CACHED)
        if cached is not _NOT_CACHED:
            return cached  # type: ignore[return-value]
        try:
            found = _mount_chain(getattr(self.app, "routes", ()), added) if added else None
        except Exception:  # a router of another make: its request must still be counted
            log.exception("cannot find the Mounts of %r among the app's routes", added)
            found = None
        if len(self._mount_chains) >= 1024:  # raw prefixes carry path parameters: keep it bounded
            self._mount_chains.clear()
        self._mount_chains[added] = found
        return found

    def mounted(self, scope: Scope, matched: Any, template: str, root_path: str) -> str:
        """The route label when a Mount matched: the Mounts' templates, then the template of the route
        matched inside. A root_path that was there when the request reached this app is not part of
        it. A mounted app without routes of its own (StaticFiles) is labelled with its Mount's
        template; a mounted router that found no route, ours or the one this app is mounted in,
        gives ``unmatched``. (FastAPI's router leaves no ``scope["route"]`` for a Mount.)"""
        if matched is None and not ROUTER_SETS_ROUTE:  # found by find(), Mounts included
            return template
        if matched is not None and not hasattr(matched, "path"):
            matched = None  # a route without a template: FastAPI 0.137's included router, a Host
        if isinstance(matched, Mount) and matched.routes:
            return UNMATCHED_ROUTE
        full = scope.get("root_path", "")
        added = full[len(root_path) :] if full.startswith(root_path) else full
        if self.app is None:  # composed by hand, no lifespan run yet: the raw prefix
            if isinstance(matched, Mount):
                return added or "/"
            bad = template is UNMATCHED_ROUTE or not isinstance(template, str)
            return UNMATCHED_ROUTE if bad else added + template
        found = self._mount_chain(added)
        # The middleware passes the root_path Starlette's first Mount saw (app_root_path); when this
        # app is itself mounted in another, the outer Mounts' part of it comes first: drop it.
        while found is None and "/" in added[1:]:
            added = added[added.index("/", 1) :]
            found = self._mount_chain(added)
        if found is None:  # no Mount of this app: the root_path came from outside
            return template if isinstance(template, str) else UNMATCHED_ROUTE
        prefix, mount = found
        if matched is None or isinstance(matched, Mount):  # the mounted app answered by itself
            return UNMATCHED_ROUTE if mount.routes else prefix or "/"
        if template is UNMATCHED_ROUTE or not isinstance(template, str):
            return UNMATCHED_ROUTE
        return prefix + template
