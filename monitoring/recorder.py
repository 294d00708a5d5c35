"""Keeps HTTP metric recording off the request's critical path.

A single ``Histogram.labels(...).observe()`` costs several microseconds (more in multiprocess mode,
where it writes to an mmap under a lock). The middleware instead appends one tuple to a list; a
flush, run by the worker's sampler every ``flush_interval`` and before every in-app scrape,
aggregates the tuples per label set and applies each label set's bucket counts in one go, as statsd
clients batch their packets. A scrape therefore includes every request that completed at least one
flush interval before it.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any

from prometheus_client import Gauge, Histogram

from monitoring.contract import OTHER_METHOD, STANDARD_METHODS

# (method, route, status, seconds)
Observation = tuple[str, str, int, float]


def bulk_observe(child: Any, total: float, counts: list[int]) -> None:
    """Add pre-bucketed observations to a prometheus_client histogram child.

    ``counts[i]`` is the number of observations that fall in bucket ``i`` (non-cumulative, the last
    one is +Inf), the layout prometheus_client keeps internally. One ``inc`` per non-empty bucket
    replaces one ``observe`` per request.
    """
    child._sum.inc(total)
    buckets = child._buckets
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)


class HttpRecorder:
    """Buffers finished requests and in-flight counts; ``flush()`` moves them into prometheus_client."""

    def __init__(self, duration: Histogram, active: Gauge) -> None:
        self.buffer: list[Observation] = []
        # In-flight requests per method: a plain dict with every method the middleware can label, the
        # cheapest thing to update per request. A method gets its series once it has been seen.
        self.active: dict[str, int] = dict.fromkeys(sorted(STANDARD_METHODS | {OTHER_METHOD}), 0)
        self._duration = duration
        self._active_gauge = active
        self._bounds: list[float] = list(duration._upper_bounds)
        self._children: dict[tuple[str, str, int], Any] = {}
        self._active_children: dict[str, Any] = {}
        self._lock = threading.Lock()

    def flush(self) -> int:
        """Apply buffered observations; returns how many were applied.

        Safe from any thread (the metrics port's server thread flushes too). The buffer is drained in
        place, because the middleware holds on to its ``append``; appends that land meanwhile go past
        ``count`` and wait for the next flush.
        """
        with self._lock:
            return self._flush()

    def _flush(self) -> int:
        count = len(self.buffer)
        batch = self.buffer[:count]
        del self.buffer[:count]
        bounds = self._bounds
        width = len(bounds)
        aggregated: dict[tuple[str, str, int], tuple[list[float], list[int]]] = {}
        for method, route, status, seconds in batch:
            key = (method, route, status)
            entry = aggregated.get(key)
            if entry is None:
                entry = aggregated[key] = ([0.0], [0] * width)
            entry[0][0] += seconds
            entry[1][bisect_left(bounds, seconds)] += 1
        seen = {key[0] for key in aggregated}
        for method, active in self.active.items():
            child = self._active_children.get(method)
            if child is None:
                # A method gets its in-flight series once a request with it has been seen: in flight
                # now, or finished since the last flush.
                if not active and method not in seen:
                    continue
                child = self._active_children[method] = self._active_gauge.labels(method)
            child.set(active)
        for key, (total, counts) in aggregated.items():
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._duration.labels(key[0], key[1], str(key[2]))
            bulk_observe(child, total[0], counts)
        return len(batch)
