"""The routes of an app and valid requests for each, from its OpenAPI schema (``asyncproof audit``).

Requests come from schemathesis: an operation's own examples first (``get_strategies_from_examples``),
generated ones (positive data: what the schema says is valid) when it has none or the app refused
them all. Each request is then sent once: the load uses only those the app accepted (or answered with
a server error: that is a finding), and a route whose requests were all refused (404 for an id that
does not exist, 422, 401 ...) is skipped with the reason, never counted healthy by silence.
"""

from __future__ import annotations

import fnmatch
import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

# Headers schemathesis adds for its own runs; the load sends its own.
_OWN_HEADERS = {"user-agent", "x-schemathesis-testcaseid", "connection", "accept-encoding"}
SEED = 20261203  # the same requests on every run of the same schema


@dataclass
class Route:
    """One operation of the schema and the requests the load sends to it."""

    method: str
    path: str  # the template, as the app's route (and the http_route label) names it
    tags: tuple[str, ...] = ()
    requests: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""  # "examples" or "generated"
    skipped: str | None = None  # why it is not loaded
    answers: dict[str, int] = field(default_factory=dict)  # status -> count, from the trial requests
    operation: Any = field(default=None, repr=False, compare=False)  # schemathesis' APIOperation

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "method": self.method,
            "path": self.path,
            "tags": list(self.tags),
            "source": self.source,
            "skipped": self.skipped,
            "answers": self.answers,
            "requests": self.requests,
        }


def matches(route: Route, patterns: Iterable[str]) -> bool:
    """Whether ``route`` is named by one of ``patterns``: ``METHOD /path``, ``/path`` or a tag, each
    with shell wildcards (``/admin/*``, ``GET *``)."""
    for pattern in patterns:
        if pattern.startswith("/"):
            if fnmatch.fnmatchcase(route.path, pattern):
                return True
        elif " " in pattern:
            method, _, path = pattern.partition(" ")
            if fnmatch.fnmatchcase(route.method, method.upper()) and fnmatch.fnmatchcase(route.path, path):
                return True
        elif any(fnmatch.fnmatchcase(tag, pattern) for tag in route.tags):
            return True
    return False


def select(routes: list[Route], only: list[str], exclude: list[str]) -> list[Route]:
    """Mark the routes ``--only``/``--exclude`` leave out as skipped (they stay in the report)."""
    for route in routes:
        if route.skipped:
            continue
        if only and not matches(route, only):
            route.skipped = "not chosen by --only"
        elif exclude and matches(route, exclude):
            route.skipped = "left out by --exclude"
    return routes


def load_schema(url: str) -> Any:
    import schemathesis

    return schemathesis.openapi.from_url(url)


def routes_of(schema: Any, own_paths: set[str], count: int) -> list[Route]:
    """Every operation of ``schema`` (but the audit's own endpoints) with up to ``count`` candidate
    requests each: examples, then generated ones."""
    routes = []
    from schemathesis.core.result import Err

    for result in schema.get_all_operations():
        if isinstance(result, Err):  # an operation whose schema cannot be resolved
            error = result.err()
            method, path = getattr(error, "method", None), getattr(error, "path", None)
            if method and path and path not in own_paths:
                routes.append(Route(method.upper(), path, skipped=f"its schema cannot be read: {error}"))
            continue
        operation = result.ok()
        route = Route(
            method=operation.method.upper(),
            path=operation.path,
            tags=tuple(operation.definition.raw.get("tags") or ()),
            operation=operation,
        )
        if route.path in own_paths:
            continue
        routes.append(route)
        try:
            route.requests = [request(case) for case in _examples(operation, count)]
            route.source = "examples"
            if not route.requests:
                route.requests, route.source = generated_requests(route, count), "generated"
        except Unsupported as error:
            route.skipped = str(error)
        except Exception as error:  # a schema schemathesis cannot generate for
            route.skipped = f"no valid request could be generated: {type(error).__name__}: {error}"
    return routes


class Unsupported(ValueError):
    """A request the load cannot send as it is (multipart uploads)."""


def request(case: Any) -> dict[str, Any]:
    """A generated case as the plain request the load sends (JSON, for the Locust process)."""
    kwargs = case.as_transport_kwargs(base_url="")
    if kwargs.get("files"):
        raise Unsupported("multipart uploads are not sent by the generated load")
    # The path carries the query string and the headers the cookies: Locust's FastHttpUser takes neither.
    query = urlencode(
        {
            k: [_text(x) for x in v] if isinstance(v, list) else _text(v)
            for k, v in (kwargs.get("params") or {}).items()
        },
        doseq=True,
    )
    url = urlsplit(kwargs["url"])  # the schema's server; the load sends the path to its own host
    path = url.path + (f"?{url.query}" if url.query else "")
    sent: dict[str, Any] = {"method": kwargs["method"], "path": path + (f"?{query}" if query else "")}
    headers = {k: str(v) for k, v in (kwargs.get("headers") or {}).items() if k.lower() not in _OWN_HEADERS}
    if kwargs.get("cookies"):
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in kwargs["cookies"].items())
    if headers:
        sent["headers"] = headers
    if "json" in kwargs:
        sent["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        sent["data"] = data.decode("latin-1") if isinstance(data, bytes) else data
    return sent


def _text(value: Any) -> str:
    """A query value as the URL spells it (JSON's true/false/null, as schemathesis sends them)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def generated_requests(route: Route, count: int) -> list[dict[str, Any]]:
    """Requests made of positive data generated from the route's schema."""
    return [request(case) for case in _generated(route.operation, count)]


def _collect(strategies: list[Any], count: int) -> list[Any]:
    """Up to ``count`` distinct cases drawn from ``strategies`` (in turn), reproducibly."""
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st

    if not strategies:
        return []
    found: list[Any] = []
    seen: set[str] = set()

    @seed(SEED)
    @settings(
        max_examples=count * 4,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(strategies))
    def draw(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url="")
        identity = repr(sorted((k, repr(v)) for k, v in kwargs.items() if k != "headers"))
        if identity not in seen and len(found) < count:
            seen.add(identity)
            found.append(case)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draw()
    return found


def _examples(operation: Any, count: int) -> list[Any]:
    from schemathesis.specs.openapi.examples import get_strategies_from_examples

    return _collect(get_strategies_from_examples(operation), count)


def _generated(operation: Any, count: int) -> list[Any]:
    from schemathesis.generation import GenerationMode
    from schemathesis.generation.meta import TestPhase

    return _collect(
        [operation.as_strategy(generation_mode=GenerationMode.POSITIVE, phase=TestPhase.FUZZING)], count
    )


def accepted(status: int | None) -> bool:
    """A request the load keeps: answered (2xx, 3xx), or a server error, which is a finding; a 4xx
    means the request needs data or rights the audit does not have."""
    return status is None or status < 400 or status >= 500


def try_requests(
    routes: list[Route],
    send: Callable[[dict[str, Any]], int | None],
    regenerate: Callable[[Route], list[dict[str, Any]]] | None = None,
) -> None:
    """Send each candidate request once; keep the accepted ones; skip a route none of whose requests
    were accepted, saying what it answered. ``send`` returns the status (None: no answer in time)."""
    for route in routes:
        if route.skipped:
            continue
        kept = _try(route, send)
        if not kept and route.source == "examples" and regenerate is not None:
            examples, answers = route.requests, route.answers
            route.requests, route.source = regenerate(route), "generated"
            kept = _try(route, send)
            if not route.requests:  # nothing generated: the examples' answers say why
                route.requests, route.source, route.answers = examples, "examples", answers
        if kept:
            route.requests = kept
            continue
        answered = ", ".join(f"{count} x {status}" for status, count in sorted(route.answers.items()))
        route.skipped = (
            f"every {route.source} request was refused ({answered}): it needs data or rights the audit "
            f"does not have; give examples in the schema, a --setup that creates them, or -H for auth"
            if route.requests
            else "no request could be generated for it"
        )
        route.requests = []


def _try(route: Route, send: Callable[[dict[str, Any]], int | None]) -> list[dict[str, Any]]:
    kept = []
    answers: Counter[str] = Counter()
    for sent in route.requests:
        status = send(sent)
        answers["no answer" if status is None else str(status)] += 1
        if accepted(status):
            kept.append(sent)
    route.answers = dict(answers)
    return kept


def merge_headers(generated: dict[str, str], given: dict[str, str]) -> dict[str, str]:
    """The request's generated headers with ``given`` (-H, --setup) in place of any of the same name,
    whatever its case: a generated ``x-token`` must not travel next to the real ``X-Token``."""
    names = {name.lower() for name in given}
    return {**{k: v for k, v in generated.items() if k.lower() not in names}, **given}


def sender(base_url: str, headers: dict[str, str], timeout: float) -> Callable[[dict[str, Any]], int | None]:
    """``send`` for :func:`try_requests`: one request on a fresh connection, the status or None."""

    def send(sent: dict[str, Any]) -> int | None:
        try:
            response = httpx.request(
                sent["method"],
                base_url + sent["path"],
                headers=merge_headers(sent.get("headers", {}), headers),
                json=sent.get("json"),
                content=sent.get("data"),
                timeout=timeout,
            )
        except (httpx.HTTPError, httpx.InvalidURL):
            return None
        return response.status_code

    return send
