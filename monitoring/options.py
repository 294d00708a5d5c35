"""What ``instrument(app, ...)`` can be told: one typed, validated object.

``instrument(app, metrics_path="/internal/metrics")`` and
``instrument(app, Options(metrics_path="/internal/metrics"))`` are the same call; an unknown or
misspelt option is a ``TypeError`` naming it, a bad value a ``ValueError`` saying what to pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from asyncproof.monitoring.contract import HTTP_SERVER_REQUEST_DURATION, OTHER_METHOD
from asyncproof.monitoring.types import Scope

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
OTHER_VALUE = OTHER_METHOD  # "_OTHER": the value of an extra label outside its allowed values


@dataclass(frozen=True)
class ExtraLabel:
    """One more label on ``http_server_request_duration_seconds``, read from each request.

    ``value(scope)`` gives the raw value; a value outside ``allowed_values`` (or ``None``) is
    recorded as ``_OTHER``, so the number of series stays bounded whatever clients send. Make one
    with :func:`from_header` or :func:`from_scope`.
    """

    name: str
    value: Callable[[Scope], str | None]
    allowed_values: frozenset[str]

    def __post_init__(self) -> None:
        if not _LABEL_NAME.fullmatch(self.name) or self.name.startswith("__"):
            raise ValueError(f"extra label name {self.name!r} is not a valid Prometheus label name")
        if self.name in HTTP_SERVER_REQUEST_DURATION.labels or self.name == "le":
            raise ValueError(f"extra label name {self.name!r} is already a label of the request histogram")
        if not self.allowed_values:
            raise ValueError(f"extra label {self.name!r} needs allowed_values: the values it may take")

    def __call__(self, scope: Scope) -> str:
        try:
            value = self.value(scope)
        except Exception:  # a broken label function must not fail the request it labels
            return OTHER_VALUE
        return value if value in self.allowed_values else OTHER_VALUE


def from_header(header: str, *, allowed_values: Iterable[str], name: str | None = None) -> ExtraLabel:
    """A label from a request header (case-insensitive), e.g. ``from_header("x-tenant", allowed_values=
    ["acme", "globex"])``; the label is named after the header (``x_tenant``) unless ``name`` is given."""
    wanted = header.lower().encode("latin-1")

    def value(scope: Scope) -> str | None:
        for key, raw in scope["headers"]:
            if key == wanted:
                return str(raw.decode("latin-1"))
        return None

    return ExtraLabel(name or header.lower().replace("-", "_"), value, frozenset(allowed_values))


def from_scope(
    name: str, func: Callable[[Scope], str | None], *, allowed_values: Iterable[str]
) -> ExtraLabel:
    """A label computed from the ASGI scope by ``func`` (called once per request, after the app
    answered, so ``scope["route"]`` and what the app put in ``scope["state"]`` are there)."""
    return ExtraLabel(name, func, frozenset(allowed_values))


@dataclass(frozen=True, kw_only=True)
class Options:
    """Every option of :func:`asyncproof.monitoring.instrument`, with its default."""

    registry: CollectorRegistry | None = None
    """Where the metrics live; ``None``: prometheus_client's global registry. Every app instrumented
    with the same registry shares its series (see the README, "Several apps in one process")."""
    metrics_path: str = "/metrics"
    health_path: str = "/health"
    """Liveness at ``{health_path}/live``, readiness at ``{health_path}/ready``, the document at
    ``health_path``. A route of the app at one of these paths wins over ours (and is logged)."""
    metrics_port: int | None = None
    """Serve ``/metrics`` on this port instead of the app's: in multiprocess mode from one exposition
    process per deployment, outside the serving workers; otherwise from a thread of this process."""
    metrics_host: str = "0.0.0.0"
    exclude_paths: Iterable[str] | None = None
    """Paths not recorded; ``None``: our own endpoints."""
    exclude_patterns: Iterable[str | re.Pattern[str]] = ()
    """Regular expressions: a request whose whole path matches one is not recorded."""
    request_id_header: str | None = None
    server_timing: bool = False
    access_log: bool = False
    readiness_cache_seconds: float = 1.0
    service_id: str | None = None
    buckets: Sequence[float] | None = None
    """Upper bounds of ``http_server_request_duration_seconds``; ``None``: the contract's."""
    extra_labels: Sequence[ExtraLabel] = ()
    """More labels on the request histogram (:func:`from_header`, :func:`from_scope`)."""
    background_tasks_in_flight: bool = True
    """Count a request in ``http_server_active_requests`` until its BackgroundTasks are done (as the
    worker is busy with them), or only until its response is sent (``False``)."""
    loop_lag_interval: float = 0.1
    flush_interval: float = 0.5
    """How often ``http_server_active_requests`` is brought up to date (the request histogram is
    always current)."""
    report_interval: float = 1.0
    stall_threshold: float | None = 0.1
    """Seconds the event loop may go without running before a watchdog thread counts a stall and
    names the route and the line of code holding it (:mod:`asyncproof.monitoring.stalls`); ``None``
    turns the watchdog off."""
    excluded: frozenset[str] = field(init=False)
    patterns: tuple[re.Pattern[str], ...] = field(init=False)

    def __post_init__(self) -> None:
        for name, path in (("metrics_path", self.metrics_path), ("health_path", self.health_path)):
            if not path.startswith("/") or path.endswith("/"):
                raise ValueError(f"{name} must start with '/' and not end with one, got {path!r}")
        if not 0 < self.flush_interval <= 1:
            raise ValueError("flush_interval must be in (0, 1] seconds: the in-flight gauge must be current")
        threshold = self.stall_threshold
        if threshold is not None and (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0 < threshold < float("inf")
        ):
            raise ValueError(
                f"stall_threshold must be a positive number of seconds (e.g. 0.1), or None to turn the "
                f"stall watchdog off; got {threshold!r}"
            )
        if self.buckets is not None:
            bounds = [float(b) for b in self.buckets]
            if not bounds or bounds != sorted(set(bounds)) or bounds[0] <= 0:
                raise ValueError(
                    "buckets must be increasing positive upper bounds in seconds, e.g. (0.1, 0.5, 1)"
                )
        names = [label.name for label in self.extra_labels]
        if len(set(names)) != len(names):
            raise ValueError(f"extra_labels has a label name twice: {names}")
        patterns = tuple(re.compile(p) if isinstance(p, str) else p for p in self.exclude_patterns)
        object.__setattr__(self, "patterns", patterns)
        health = self.health_path
        builtin = (self.metrics_path, health, f"{health}/live", f"{health}/ready")
        excluded = self.exclude_paths if self.exclude_paths is not None else builtin
        object.__setattr__(self, "excluded", frozenset(excluded))

    @property
    def http_labels(self) -> tuple[str, ...]:
        """The names of the extra labels, in order."""
        return tuple(label.name for label in self.extra_labels)
