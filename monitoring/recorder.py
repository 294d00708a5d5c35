"""Keeps HTTP metric recording off the request's critical path.

A single ``Histogram.labels(...).observe()`` costs several microseconds (more in multiprocess mode,
where it writes to an mmap under a lock). The middleware instead appends each request's duration to a
list kept per label set; a flush, run by the worker's sampler every ``flush_interval`` and before every
in-app scrape, drains the lists and applies each label set's bucket counts in one go, as statsd
clients batch their packets. A label set's durations are sorted (in C, with CPython's fast float
comparison) and each bucket's count is one binary search, so a flush costs a few tens of nanoseconds
per request. A scrape therefore includes every request that completed at least one flush interval
before it.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from typing import Any

from prometheus_client import Gauge, Histogram

from asyncproof.monitoring.contract import OTHER_METHOD, STANDARD_METHODS

# (method, route, status, *extra label values): one series, status as the int the app sent
Key = tuple[Any, ...]


def bulk_observe(child: Any, durations: list[float]) -> None:
    """Add ``durations``, sorted, to a prometheus_client histogram child.

    prometheus_client keeps one non-cumulative count per bucket (the last one is +Inf); a bucket
    counts the durations up to its upper bound, inclusive. One ``inc`` per non-empty bucket replaces
    one ``observe`` per request.
    """
    child._sum.inc(sum(durations))
    below = 0
    for bound, bucket in zip(child._upper_bounds, child._buckets, strict=True):
        upto = bisect_right(durations, bound)
        if upto > below:
            bucket.inc(upto - below)
            below = upto


class _Pending(dict[Key, list[float]]):
    """Durations of the requests finished since the last flush, per label set.

    ``pending[key]`` makes the list on first use (``__missing__``), so the middleware appends with
    one subscript. A list, once made, stays: the middleware appends to it without a lock while a
    flush (possibly on the metrics port's thread) drains it in place. ``series`` holds the same
    lists in the order they were made, for the flush: an append-only list can be read by index
    while another thread adds to it, where iterating the dict could fail mid-way.
    """

    def __init__(self) -> None:
        super().__init__()
        self.series: list[tuple[Key, list[float]]] = []
        self._lock = threading.Lock()

    def __missing__(self, key: Key) -> list[float]:
        with self._lock:  # once per label set
            found = self.get(key)
            if found is None:
                found = self[key] = []
                self.series.append((key, found))
        return found


class HttpRecorder:
    """Buffers finished requests and in-flight counts; ``flush()`` moves them into prometheus_client.

    Requests whose BackgroundTasks do not count as in flight (``background_tasks_in_flight=False``)
    go to ``pending_foreground``; ``responded`` counts those whose response is complete (or that
    ended without one), so that in flight = started - finished - (responded - finished of those) =
    started - finished of the others - responded.
    """

    def __init__(self, duration: Histogram, active: Gauge) -> None:
        # There are as many lists as there are series.
        self.pending = _Pending()
        self.pending_foreground = _Pending()
        # Requests started per method, counted by the middleware: a plain dict with every method it
        # can label, the cheapest thing to update per request. A flush counts the finished ones (the
        # durations it drains), so in flight = started - finished, with no second update per request.
        self.started: dict[str, int] = dict.fromkeys(sorted(STANDARD_METHODS | {OTHER_METHOD}), 0)
        self._finished: dict[str, int] = dict.fromkeys(self.started, 0)
        self.responded: dict[str, int] = dict.fromkeys(self.started, 0)
        self._finished_foreground: dict[str, int] = dict.fromkeys(self.started, 0)
        self._duration = duration
        self._active_gauge = active
        self._children: dict[Key, Any] = {}
        self._active_children: dict[str, Any] = {}
        self._lock = threading.Lock()

    def flush(self) -> int:
        """Apply buffered observations; returns how many were applied. Safe from any thread."""
        with self._lock:
            return self._flush()

    def observe_now(self, key: Key, seconds: float, *, foreground: bool = False) -> None:
        """Record one request at once, bypassing the buffers (the middleware's fallback)."""
        with self._lock:
            self._child(key).observe(seconds)
            (self._finished_foreground if foreground else self._finished)[key[0]] += 1

    def _child(self, key: Key) -> Any:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._duration.labels(key[0], key[1], str(key[2]), *key[3:])
        return child

    def _drain(self, pending: _Pending, finished: dict[str, int]) -> int:
        applied = 0
        series = pending.series
        for index in range(len(series)):  # label sets added meanwhile wait for the next flush
            key, durations = series[index]
            count = len(durations)
            if not count:
                continue
            # Drained in place, up to what was there: appends that land meanwhile wait for the next flush.
            batch = durations[:count]
            del durations[:count]
            batch.sort()
            bulk_observe(self._child(key), batch)
            finished[key[0]] += count
            applied += count
        return applied

    def _flush(self) -> int:
        applied = self._drain(self.pending, self._finished)
        applied += self._drain(self.pending_foreground, self._finished_foreground)
        responded = self.responded  # written by the loop's thread only; read here
        for method, started in self.started.items():
            gauge = self._active_children.get(method)
            if gauge is None:
                if not started:  # a method gets its in-flight series once a request with it has started
                    continue
                gauge = self._active_children[method] = self._active_gauge.labels(method)
            # responded - finished: foreground requests whose response is complete, still running
            done = self._finished[method] + responded[method]
            gauge.set(started - done)
        return applied
