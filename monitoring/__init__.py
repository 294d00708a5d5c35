"""asyncproof's monitoring library: ``instrument(app)`` for correct multi-worker metrics and health.

Importing this package imports nothing else: prometheus_client chooses single- or multiprocess mode
when it is first imported, and :mod:`asyncproof.monitoring.gunicorn` must be able to set
``PROMETHEUS_MULTIPROC_DIR`` before that happens. The names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CheckResult",
    "ExtraLabel",
    "Health",
    "HealthReport",
    "Instrumentation",
    "InstrumentationMiddleware",
    "InstrumentedTTLCache",
    "JsonFormatter",
    "Metrics",
    "Options",
    "PoolInstrumentation",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "RouteConflictWarning",
    "TaskRun",
    "TaskTracker",
    "from_header",
    "from_scope",
    "get_request_id",
    "instrument",
    "instrument_pool",
    "mark_process_dead",
    "sweep",
    "watch_executor",
]

_WHERE = {
    "CheckResult": "asyncproof.monitoring.health",
    "ExtraLabel": "asyncproof.monitoring.options",
    "Health": "asyncproof.monitoring.health",
    "HealthReport": "asyncproof.monitoring.health",
    "Instrumentation": "asyncproof.monitoring.instrumentation",
    "InstrumentationMiddleware": "asyncproof.monitoring.middleware",
    "InstrumentedTTLCache": "asyncproof.monitoring.cache",
    "JsonFormatter": "asyncproof.monitoring.request_id",
    "Metrics": "asyncproof.monitoring.metrics",
    "Options": "asyncproof.monitoring.options",
    "PoolInstrumentation": "asyncproof.monitoring.db",
    "RequestIdFilter": "asyncproof.monitoring.request_id",
    "RequestIdMiddleware": "asyncproof.monitoring.middleware",
    "RouteConflictWarning": "asyncproof.monitoring.routes",
    "TaskRun": "asyncproof.monitoring.tasks",
    "TaskTracker": "asyncproof.monitoring.tasks",
    "from_header": "asyncproof.monitoring.options",
    "from_scope": "asyncproof.monitoring.options",
    "get_request_id": "asyncproof.monitoring.request_id",
    "instrument": "asyncproof.monitoring.instrumentation",
    "instrument_pool": "asyncproof.monitoring.db",
    "mark_process_dead": "asyncproof.monitoring.multiprocess",
    "sweep": "asyncproof.monitoring.multiprocess",
    "watch_executor": "asyncproof.monitoring.executors",
}

# Optional dependencies of some names, and the extra that brings each.
_EXTRAS = {"sqlalchemy": "sqlalchemy"}

if TYPE_CHECKING:
    from asyncproof.monitoring.cache import InstrumentedTTLCache
    from asyncproof.monitoring.db import PoolInstrumentation, instrument_pool
    from asyncproof.monitoring.executors import watch_executor
    from asyncproof.monitoring.health import CheckResult, Health, HealthReport
    from asyncproof.monitoring.instrumentation import Instrumentation, instrument
    from asyncproof.monitoring.metrics import Metrics
    from asyncproof.monitoring.middleware import InstrumentationMiddleware, RequestIdMiddleware
    from asyncproof.monitoring.multiprocess import mark_process_dead, sweep
    from asyncproof.monitoring.options import ExtraLabel, Options, from_header, from_scope
    from asyncproof.monitoring.request_id import JsonFormatter, RequestIdFilter, get_request_id
    from asyncproof.monitoring.routes import RouteConflictWarning
    from asyncproof.monitoring.tasks import TaskRun, TaskTracker


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncproof.monitoring' has no attribute {name!r}")
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as error:
        extra = _EXTRAS.get(error.name or "")
        if extra is None:
            raise
        raise ModuleNotFoundError(
            f"{name} needs {error.name}, which is not installed: pip install 'asyncproof[{extra}]'",
            name=error.name,
        ) from error
    value = getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
