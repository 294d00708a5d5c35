"""SQLAlchemy pool metrics through pool events: connections used and idle, max, checkout wait, timeouts."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any
from weakref import WeakSet

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import (
    AssertionPool,
    ConnectionPoolEntry,
    Pool,
    QueuePool,
    SingletonThreadPool,
    StaticPool,
)

from asyncproof.monitoring.metrics import Metrics

# QueuePool._do_get calls itself to retry when another thread took the last slot first; only the
# outermost call is timed, or one checkout would be observed (and one timeout counted) twice. A context
# variable rather than a thread-local, because asyncio checkouts interleave on one thread.
_in_do_get: ContextVar[bool] = ContextVar("monitoring_db_in_do_get", default=False)


def pool_max(pool: Pool) -> float:
    """Most connections ``pool`` may hold open at once.

    ``QueuePool`` (and ``AsyncAdaptedQueuePool``): ``pool_size + max_overflow``; ``SingletonThreadPool``:
    its ``pool_size`` (it closes the oldest thread's connection beyond it); ``StaticPool`` and
    ``AssertionPool``: 1. ``NullPool`` and a ``QueuePool`` with ``max_overflow=-1`` set no limit:
    ``+Inf``, so that ``used / max`` reads 0 rather than dividing by zero or a made-up number.
    """
    if isinstance(pool, QueuePool):
        overflow = pool._max_overflow
        return math.inf if overflow < 0 else float(pool.size() + overflow)
    if isinstance(pool, SingletonThreadPool):
        return float(pool.size)
    if isinstance(pool, StaticPool | AssertionPool):
        return 1.0
    return math.inf


class PoolInstrumentation:
    """What :func:`instrument_pool` attached to an engine; ``remove()`` detaches it."""

    def __init__(self, engine: Engine, name: str, metrics: Metrics) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        # Sets of pool entries rather than +1/-1 counters: SQLAlchemy fires `checkin` without a
        # `checkout` when reconnecting a pooled entry fails, and StaticPool hands its one entry to
        # overlapping checkouts but checks it in once; counters drift in both cases, sets cannot.
        self._used: WeakSet[ConnectionPoolEntry] = WeakSet()
        self._idle: WeakSet[ConnectionPoolEntry] = WeakSet()
        # Entries of pools that engine.dispose() replaced: they no longer belong to this engine's pool,
        # but their events still reach these listeners when they are checked in or closed.
        self._retired: WeakSet[ConnectionPoolEntry] = WeakSet()
        self._used_gauge = metrics.db_connections.labels(name, "used")
        self._idle_gauge = metrics.db_connections.labels(name, "idle")
        self._max_gauge = metrics.db_connections_max.labels(name)
        self._wait = metrics.db_connection_wait.labels(name)
        self._timeouts = metrics.db_connection_timeouts.labels(name)
        self._pool: Pool | None = None
        self._original_do_get: Callable[[], ConnectionPoolEntry] | None = None
        self._listeners: dict[str, Callable[..., None]] = {
            "connect": self._on_connect,
            "checkout": self._on_checkout,
            "checkin": self._on_checkin,
            "close": self._on_close,
            "detach": self._on_detach,
            "engine_disposed": self._on_engine_disposed,
        }
        # Listening on the engine, not its pool: dispose() moves pool listeners onto the new pool, and
        # event.remove() must be given the target they were registered on.
        for identifier, listener in self._listeners.items():
            event.listen(engine, identifier, listener)
        self._wrap(engine.pool)
        self._publish()

    def _publish(self) -> None:
        self._used_gauge.set(len(self._used))
        self._idle_gauge.set(len(self._idle))

    def _on_connect(self, dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        with self._lock:
            # A reconnect during checkout (pre-ping or a checkout listener found it dead) keeps it used.
            if entry not in self._used and entry not in self._retired:
                self._idle.add(entry)
                self._publish()

    def _on_checkout(self, dbapi_connection: Any, entry: ConnectionPoolEntry, proxy: Any) -> None:
        with self._lock:
            if entry not in self._retired:
                self._idle.discard(entry)
                self._used.add(entry)
                self._publish()

    def _on_checkin(self, dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        with self._lock:
            self._used.discard(entry)
            # `dbapi_connection` is None when the connection was invalidated or closed while checked out.
            if dbapi_connection is not None and entry not in self._retired:
                self._idle.add(entry)
            self._publish()

    def _on_close(self, dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        with self._lock:
            self._idle.discard(entry)  # closed while checked out: still used until checked in
            self._publish()

    def _on_detach(self, dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        with self._lock:  # the connection leaves the pool for good and is never checked in
            self._used.discard(entry)
            self._idle.discard(entry)
            self._publish()

    def _on_engine_disposed(self, engine: Engine) -> None:
        with self._lock:
            # dispose() closed the idle connections already (or, with close=False, abandoned them);
            # connections still checked out stay with the old pool.
            self._retired.update(self._used)
            self._retired.update(self._idle)
            self._used.clear()
            self._idle.clear()
            self._publish()
        self._unwrap()
        self._wrap(engine.pool)

    def _wrap(self, pool: Pool) -> None:
        # No pool event covers the wait for a free connection, so the pool's own `_do_get` is timed.
        self._max_gauge.set(pool_max(pool))
        do_get = pool._do_get
        wait, timeouts = self._wait, self._timeouts

        def timed_do_get() -> ConnectionPoolEntry:
            if _in_do_get.get():
                return do_get()
            token = _in_do_get.set(True)
            started = time.perf_counter()
            try:
                return do_get()
            except exc.TimeoutError:
                timeouts.inc()
                raise
            finally:
                wait.observe(time.perf_counter() - started)
                _in_do_get.reset(token)

        pool._do_get = timed_do_get  # type: ignore[method-assign]
        self._pool, self._original_do_get = pool, do_get

    def _unwrap(self) -> None:
        if self._pool is not None and self._original_do_get is not None:
            self._pool._do_get = self._original_do_get  # type: ignore[method-assign]
        self._pool = self._original_do_get = None

    def remove(self) -> None:
        """Detach the listeners and the timing; the gauges keep their last values. Safe to call twice."""
        if self._pool is None:
            return
        for identifier, listener in self._listeners.items():
            event.remove(self.engine, identifier, listener)
        self._unwrap()


def instrument_pool(engine: Engine | AsyncEngine, name: str, metrics: Metrics) -> PoolInstrumentation:
    """Record ``db_client_connections{state=used|idle}``, ``db_client_connections_max``,
    ``db_client_connection_wait_seconds`` and ``db_client_connection_timeouts_total`` for the pool of
    ``engine`` (sync or async), labelled ``pool=name``. Call it once per engine, right after creating it.

    ``used`` counts checked-out connections, ``idle`` open connections waiting in the pool (see
    :func:`pool_max` for the maximum). The wait is the time ``Pool._do_get`` takes: queueing for a free
    connection, plus opening one when the pool grows (``NullPool``: every checkout opens one). It
    survives ``engine.dispose()``: connections still checked out at that moment leave the counts, and
    the new pool is counted from empty. Returns a :class:`PoolInstrumentation`; ``remove()`` undoes it.
    """
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    return PoolInstrumentation(sync_engine, name, metrics)


__all__ = ["PoolInstrumentation", "instrument_pool", "pool_max"]
