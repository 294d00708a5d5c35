"""SQLAlchemy pool metrics through pool events: connections used and idle, max, checkout wait, timeouts."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool, QueuePool, SingletonThreadPool

from monitoring.metrics import Metrics


def pool_max(pool: Pool) -> float:
    """Most connections ``pool`` may hold open at once (``inf`` where it sets no limit, as NullPool)."""
    if isinstance(pool, QueuePool):  # AsyncAdaptedQueuePool too
        overflow = pool._max_overflow
        return math.inf if overflow < 0 else float(pool.size() + overflow)
    if isinstance(pool, SingletonThreadPool):
        return float(pool.size)
    if type(pool).__name__ in ("StaticPool", "AssertionPool"):
        return 1.0
    return math.inf


class PoolInstrumentation:
    """What :func:`instrument_pool` attached; ``remove()`` detaches it."""

    def __init__(self, engine: Engine, name: str, metrics: Metrics) -> None:
        self.engine = engine
        self.pool = engine.pool
        self._lock = threading.Lock()
        self._open = 0  # live DBAPI connections the pool made and has not closed or detached
        self._used = 0  # of those, checked out right now
        self._used_gauge = metrics.db_connections.labels(name, "used")
        self._idle_gauge = metrics.db_connections.labels(name, "idle")
        self._wait = metrics.db_connection_wait.labels(name)
        self._timeouts = metrics.db_connection_timeouts.labels(name)
        metrics.db_connections_max.labels(name).set(pool_max(self.pool))
        self._listeners: dict[str, Callable[..., None]] = {
            "connect": self._on_connect,
            "checkout": self._on_checkout,
            "checkin": self._on_checkin,
            "close": self._on_close,
            "detach": self._on_detach,
        }
        for name_, listener in self._listeners.items():
            event.listen(self.pool, name_, listener)
        # No pool event covers the wait for a free connection, so the pool's own `_do_get` is timed.
        self._do_get = self.pool._do_get
        self.pool._do_get = self._timed_do_get  # type: ignore[method-assign]
        self._publish()

    def _change(self, opened: int = 0, used: int = 0) -> None:
        with self._lock:
            self._open += opened
            self._used += used
            self._publish()

    def _publish(self) -> None:
        self._used_gauge.set(self._used)
        self._idle_gauge.set(max(0, self._open - self._used))

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        self._change(opened=1)

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        self._change(used=1)

    def _on_checkin(self, dbapi_connection: Any, record: Any) -> None:
        self._change(used=-1)

    def _on_close(self, dbapi_connection: Any, record: Any) -> None:
        self._change(opened=-1)

    def _on_detach(self, dbapi_connection: Any, record: Any) -> None:
        # A detached connection leaves the pool while checked out and is never checked in.
        self._change(opened=-1, used=-1)

    def _timed_do_get(self) -> Any:
        started = time.perf_counter()
        try:
            return self._do_get()
        except exc.TimeoutError:
            self._timeouts.inc()
            raise
        finally:
            self._wait.observe(time.perf_counter() - started)

    def remove(self) -> None:
        for name, listener in self._listeners.items():
            event.remove(self.pool, name, listener)
        self.pool._do_get = self._do_get  # type: ignore[method-assign]


def instrument_pool(engine: Engine | AsyncEngine, name: str, metrics: Metrics) -> PoolInstrumentation:
    """Record ``db_client_connections{state=used|idle}``, ``db_client_connections_max``,
    ``db_client_connection_wait_seconds`` and ``db_client_connection_timeouts_total`` for the pool of
    ``engine`` (sync or async), labelled ``pool=name``.

    The wait is the time ``Pool._do_get`` takes: waiting for a free connection, plus opening one when
    the pool grows. ``engine.dispose()`` replaces the pool; call this again afterwards.
    """
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    return PoolInstrumentation(sync_engine, name, metrics)
