"""A TTL + LRU cache (cachetools) that records the contract's cache metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache

from asyncproof.monitoring.metrics import Metrics

_MISSING: Any = object()


class InstrumentedTTLCache(TTLCache[Any, Any]):
    """``cachetools.TTLCache`` counting ``cache_hits_total``, ``cache_misses_total``,
    ``cache_evictions_total`` (entries dropped for room or because they expired) and keeping
    ``cache_size_items`` current, all labelled ``cache=name``.

    Look-ups are ``cache[key]`` and ``cache.get(key)`` (so also ``cachetools.cached(cache)``); a look-up
    of an expired entry is a miss. ``in``, ``pop`` and ``setdefault`` count nothing: they are how
    callers test, invalidate and store. Deleting an entry yourself is not an eviction. Expired entries
    are evicted (and counted) lazily, when the cache is next written to or its length is read.
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
            raise ValueError(f"maxsize must be >= 1 and ttl > 0 seconds, got maxsize={maxsize}, ttl={ttl}")
        # Resolved once: a label lookup per hit would cost more than the cache read itself.
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
        # TTLCache.get freezes the timer so that an entry cannot expire between the membership test
        # and the read (which would raise KeyError out of get); this keeps that guarantee.
        with self.timer:
            if key in self:
                return self[key]  # counts the hit
        self._misses.inc()
        return default

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        # cachetools' pop reads through self[key], which would count every invalidation as a hit.
        with self.timer:
            if key in self:
                value = super().__getitem__(key)
                del self[key]
                return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def setdefault(self, key: Any, default: Any = None) -> Any:
        # cachetools.cached(lock=...) stores a computed value with setdefault right after the miss it
        # already counted; reading the value here must not count a second look-up.
        with self.timer:
            if key in self:
                return super().__getitem__(key)
            self[key] = default
            return default

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._size.set(len(self))

    def __delitem__(self, key: Any) -> None:
        try:
            super().__delitem__(key)
        finally:  # TTLCache deletes an expired entry, then raises KeyError for it
            self._size.set(len(self))

    def popitem(self) -> tuple[Any, Any]:
        # cachetools calls this to make room; an explicit call is an eviction too. TTLCache.popitem
        # first runs expire(), which counts the expired entries itself.
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
