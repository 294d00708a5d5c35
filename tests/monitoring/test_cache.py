from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from monitoring.cache import InstrumentedTTLCache
from monitoring.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(maxsize: int = 3, ttl: float = 10) -> tuple[InstrumentedTTLCache, Clock, CollectorRegistry]:
    registry = CollectorRegistry()
    clock = Clock()
    return (
        InstrumentedTTLCache("items", Metrics(registry), maxsize=maxsize, ttl=ttl, timer=clock),
        clock,
        registry,
    )


def sample(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name, {"cache": "items"}) or 0.0


def test_hits_and_misses_through_get_and_subscript() -> None:
    cache, _, registry = make()
    cache["a"] = 1
    assert cache.get("a") == 1
    assert cache["a"] == 1
    assert cache.get("b") is None
    with pytest.raises(KeyError):
        cache["b"]
    assert "a" in cache  # a membership test is not a look-up
    assert sample(registry, "cache_hits_total") == 2
    assert sample(registry, "cache_misses_total") == 2


def test_size_evictions_are_counted_and_size_is_bounded() -> None:
    cache, _, registry = make(maxsize=3)
    for key in range(10):
        cache[key] = key
    assert len(cache) == 3
    assert sample(registry, "cache_evictions_total") == 7
    assert sample(registry, "cache_size_items") == 3


def test_expired_entries_are_misses_and_evictions() -> None:
    cache, clock, registry = make(ttl=10)
    cache["a"] = 1
    cache["b"] = 2
    clock.now = 11
    assert cache.get("a") is None
    cache["c"] = 3  # a write expires what is due
    assert sample(registry, "cache_misses_total") == 1
    assert sample(registry, "cache_evictions_total") == 2
    assert sample(registry, "cache_size_items") == 1


def test_explicit_deletes_and_clear_change_size_not_evictions() -> None:
    cache, _, registry = make()
    cache["a"] = 1
    cache["b"] = 2
    del cache["a"]
    assert sample(registry, "cache_size_items") == 1
    cache.clear()
    assert sample(registry, "cache_size_items") == 0
    assert sample(registry, "cache_evictions_total") == 0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        InstrumentedTTLCache("x", Metrics(CollectorRegistry()), maxsize=0, ttl=1)
