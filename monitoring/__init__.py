"""asyncproof's monitoring library: ``instrument(app)`` for correct multi-worker metrics and health.

Importing this package imports nothing else: prometheus_client chooses single- or multiprocess mode
when it is first imported, and :mod:`asyncproof.monitoring.gunicorn` must be able to set
``PROMETHEUS_MULTIPROC_DIR`` before that happens. The names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Health",
    "HealthReport",
    "Instrumentation",
    "InstrumentationMiddleware",
    "InstrumentedTTLCache",
    "JsonFormatter",
    "Metrics",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "TaskTracker",
    "get_request_id",
    "instrument",
    "instrument_pool",
    "mark_process_dead",
    "sweep",
]

_WHERE = {
    "Health": "asyncproof.monitoring.health",
    "HealthReport": "asyncproof.monitoring.health",
    "Instrumentation": "asyncproof.monitoring.instrumentation",
    "InstrumentedTTLCache": "asyncproof.monitoring.cache",
    "InstrumentationMiddleware": "asyncproof.monitoring.middleware",
    "JsonFormatter": "asyncproof.monitoring.request_id",
    "Metrics": "asyncproof.monitoring.metrics",
    "RequestIdFilter": "asyncproof.monitoring.request_id",
    "RequestIdMiddleware": "asyncproof.monitoring.middleware",
    "TaskTracker": "asyncproof.monitoring.tasks",
    "get_request_id": "asyncproof.monitoring.request_id",
    "instrument_pool": "asyncproof.monitoring.db",
    "instrument": "asyncproof.monitoring.instrumentation",
    "mark_process_dead": "asyncproof.monitoring.multiprocess",
    "sweep": "asyncproof.monitoring.multiprocess",
}

if TYPE_CHECKING:
    from asyncproof.monitoring.cache import InstrumentedTTLCache
    from asyncproof.monitoring.db import instrument_pool
    from asyncproof.monitoring.health import Health, HealthReport
    from asyncproof.monitoring.instrumentation import Instrumentation, instrument
    from asyncproof.monitoring.metrics import Metrics
    from asyncproof.monitoring.middleware import InstrumentationMiddleware, RequestIdMiddleware
    from asyncproof.monitoring.multiprocess import mark_process_dead, sweep
    from asyncproof.monitoring.request_id import JsonFormatter, RequestIdFilter, get_request_id
    from asyncproof.monitoring.tasks import TaskTracker


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'monitoring' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
