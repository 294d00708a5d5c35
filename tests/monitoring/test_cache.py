from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from cachetools import cached
from prometheus_client import CollectorRegistry

from asyncproof.monitoring.cache import InstrumentedTTLCache
from asyncproof.monitoring.metrics import Metrics


class Clock:
    """A timer the test moves by hand; ``step`` advances it after every reading."""

    def __init__(self) -> None:
        self.now = 0.0
        self.step = 0.0

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now


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


def subscript(cache: InstrumentedTTLCache, key: str) -> Any:
    try:
        return cache[key]
    except KeyError:
        return None


LOOKUPS: list[Callable[[InstrumentedTTLCache, str], Any]] = [InstrumentedTTLCache.get, subscript]


@pytest.mark.parametrize("lookup", LOOKUPS, ids=["get", "subscript"])
def test_lookups_count_hits_misses_and_expired_entries_as_misses(
    lookup: Callable[[InstrumentedTTLCache, str], Any],
) -> None:
    cache, clock, registry = make(ttl=10)
    cache["a"] = 1
    assert lookup(cache, "a") == 1
    assert lookup(cache, "absent") is None
    clock.now = 10  # the entry expires at exactly now + ttl
    assert lookup(cache, "a") is None
    assert sample(registry, "cache_hits_total") == 1
    assert sample(registry, "cache_misses_total") == 2


def test_membership_pop_and_setdefault_are_not_lookups() -> None:
    cache, _, registry = make()
    cache["a"] = 1
    assert "a" in cache
    assert "b" not in cache
    assert cache.setdefault("a", 2) == 1
    assert cache.setdefault("b", 2) == 2
    assert cache.pop("a") == 1
    assert cache.pop("a", None) is None
    with pytest.raises(KeyError):
        cache.pop("a")
    assert sample(registry, "cache_hits_total") == 0
    assert sample(registry, "cache_misses_total") == 0
    assert sample(registry, "cache_size_items") == 1


def test_get_of_an_entry_expiring_mid_call_is_a_hit_not_a_key_error() -> None:
    cache, clock, registry = make(ttl=10)
    cache["a"] = 1
    clock.now, clock.step = 9.5, 1.0  # any second reading of the timer would find the entry expired
    assert cache.get("a") == 1
    assert sample(registry, "cache_hits_total") == 1
    assert sample(registry, "cache_misses_total") == 0


@pytest.mark.parametrize("lock", [None, threading.Lock()], ids=["no-lock", "lock"])
def test_cachetools_cached_decorator_counts_one_miss_then_hits(lock: threading.Lock | None) -> None:
    cache, _, registry = make()
    calls = 0

    @cached(cache, lock=lock)
    def square(n: int) -> int:
        nonlocal calls
        calls += 1
        return n * n

    assert [square(3), square(3), square(3)] == [9, 9, 9]
    assert calls == 1
    assert sample(registry, "cache_misses_total") == 1  # with a lock, the store is a setdefault
    assert sample(registry, "cache_hits_total") == 2
    assert sample(registry, "cache_size_items") == 1


def test_size_evictions_are_counted_and_size_is_bounded() -> None:
    cache, _, registry = make(maxsize=3)
    for key in range(10):
        cache[str(key)] = key
    assert len(cache) == 3
    assert sample(registry, "cache_evictions_total") == 7
    assert sample(registry, "cache_size_items") == 3


def test_expired_entries_are_evicted_once_on_the_next_write() -> None:
    cache, clock, registry = make(ttl=10)
    cache["a"] = 1
    cache["b"] = 2
    clock.now = 11
    assert cache.get("a") is None  # a miss, but the entry stays until the next write
    assert sample(registry, "cache_evictions_total") == 0
    cache["c"] = 3
    assert sample(registry, "cache_misses_total") == 1
    assert sample(registry, "cache_evictions_total") == 2
    assert sample(registry, "cache_size_items") == 1


def test_expiry_and_size_evictions_are_not_double_counted() -> None:
    cache, clock, registry = make(maxsize=2, ttl=10)
    cache["a"] = 1
    clock.now = 5
    cache["b"] = 2
    clock.now = 11  # "a" has expired, "b" has not
    cache["c"] = 3  # the expiry made room: no size eviction
    assert sample(registry, "cache_evictions_total") == 1
    cache["d"] = 4  # full of live entries: "b", least recently used, goes
    assert sample(registry, "cache_evictions_total") == 2
    assert sorted(cache) == ["c", "d"]
    assert sample(registry, "cache_size_items") == 2


def test_reading_the_length_evicts_what_expired_and_updates_the_size() -> None:
    cache, clock, registry = make(ttl=10)
    cache["a"] = 1
    cache["b"] = 2
    clock.now = 10
    assert len(cache) == 0
    assert sample(registry, "cache_evictions_total") == 2
    assert sample(registry, "cache_size_items") == 0


def test_explicit_deletes_and_clear_change_size_not_evictions() -> None:
    cache, clock, registry = make()
    cache["a"] = 1
    cache["b"] = 2
    cache["c"] = 3
    del cache["a"]
    assert sample(registry, "cache_size_items") == 2
    clock.now = 10
    with pytest.raises(KeyError):  # TTLCache removes an expired entry, then reports it missing
        del cache["b"]
    assert sample(registry, "cache_size_items") == 0  # "c" expired too and was evicted on the way
    cache["d"] = 4
    cache.clear()
    assert sample(registry, "cache_size_items") == 0
    assert sample(registry, "cache_evictions_total") == 1


@pytest.mark.parametrize(("maxsize", "ttl"), [(0, 1.0), (10, 0.0), (10, -1.0)])
def test_bad_sizes_are_refused(maxsize: int, ttl: float) -> None:
    with pytest.raises(ValueError, match="maxsize must be >= 1 and ttl > 0"):
        InstrumentedTTLCache("x", Metrics(CollectorRegistry()), maxsize=maxsize, ttl=ttl)
