"""A TTL + LRU cache (cachetools) that records the contract's cache metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache

from monitoring.metrics import Metrics

_MISSING = object()


class InstrumentedTTLCache(TTLCache[Any, Any]):
    """``cachetools.TTLCache`` counting ``cache_hits_total``, ``cache_misses_total``,
    ``cache_evictions_total`` (entries dropped for room or because they expired) and keeping
    ``cache_size_items`` current, all labelled ``cache=name``.

    A look-up of an expired entry is a miss. Deleting an entry yourself is not an eviction.
    """

    def __init__(
        self,
        name: str,
        metrics: Metrics,
        *,
        maxsize: int,
        ttl: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if maxsize < 1 or ttl <= 0:
            raise ValueError("maxsize must be >= 1 and ttl > 0 seconds")
        self._hits = metrics.cache_hits.labels(name)
        self._misses = metrics.cache_misses.labels(name)
        self._evictions = metrics.cache_evictions.labels(name)
        self._size = metrics.cache_size.labels(name)
        super().__init__(maxsize=maxsize, ttl=ttl, timer=timer)

    def __getitem__(self, key: Any) -> Any:
        try:
            value = super().__getitem__(key)
        except KeyError:
            self._misses.inc()
            raise
        self._hits.inc()
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:  # __contains__ ignores expired entries; __getitem__ then counts the hit
            return self[key]
        self._misses.inc()
        return default

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._size.set(len(self))

    def __delitem__(self, key: Any) -> None:
        try:
            super().__delitem__(key)
        finally:
            self._size.set(len(self))

    def popitem(self) -> tuple[Any, Any]:
        # cachetools calls this to make room; an explicit call is an eviction too.
        item = super().popitem()
        self._evictions.inc()
        return item

    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        expired = super().expire(time)
        if expired:
            self._evictions.inc(len(expired))
            self._size.set(len(self))
        return expired

    def clear(self) -> None:
        super().clear()
        self._size.set(0)
