"""asyncproof's monitoring library: ``instrument(app)`` for correct multi-worker metrics and health.

Importing this package imports nothing else: prometheus_client chooses single- or multiprocess mode
when it is first imported, and :mod:`monitoring.gunicorn` must be able to set
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
    "Health": "monitoring.health",
    "HealthReport": "monitoring.health",
    "Instrumentation": "monitoring.instrumentation",
    "InstrumentedTTLCache": "monitoring.cache",
    "InstrumentationMiddleware": "monitoring.middleware",
    "JsonFormatter": "monitoring.request_id",
    "Metrics": "monitoring.metrics",
    "RequestIdFilter": "monitoring.request_id",
    "RequestIdMiddleware": "monitoring.middleware",
    "TaskTracker": "monitoring.tasks",
    "get_request_id": "monitoring.request_id",
    "instrument_pool": "monitoring.db",
    "instrument": "monitoring.instrumentation",
    "mark_process_dead": "monitoring.multiprocess",
    "sweep": "monitoring.multiprocess",
}

if TYPE_CHECKING:
    from monitoring.cache import InstrumentedTTLCache
    from monitoring.db import instrument_pool
    from monitoring.health import Health, HealthReport
    from monitoring.instrumentation import Instrumentation, instrument
    from monitoring.metrics import Metrics
    from monitoring.middleware import InstrumentationMiddleware, RequestIdMiddleware
    from monitoring.multiprocess import mark_process_dead, sweep
    from monitoring.request_id import JsonFormatter, RequestIdFilter, get_request_id
    from monitoring.tasks import TaskTracker


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'monitoring' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
