"""HTTP request durations recorded straight into shared memory: nothing waits, nothing is lost.

Each label set (series) of ``http_server_request_duration_seconds`` owns one double per bucket (the
count of requests that fell in it, not cumulative, as prometheus_client stores them) and one for the
sum. The middleware records a request with two in-place additions on a memoryview of its series::

    series = recorder.series[method, route, status]
    series[bisect_left(bounds, seconds)] += 1.0
    series[-1] += seconds

In multiprocess mode the doubles live in a file of the metrics folder, ``histogram_asyncproof_<pid>.db``,
written in prometheus_client's own layout (see :mod:`prometheus_client.mmap_dict`: a JSON key per
sample, its value and a timestamp), so any multiprocess collector reads it. Each series' entries are
written with keys padded to one length, so its values lie at a fixed stride and one strided memoryview
covers them. The file is mapped shared: a value written is in the page cache at once, visible to a
scrape in another process, and it outlives the process — a worker killed with SIGKILL loses no
request its middleware had recorded, and no scrape waits for a flush. In single-process mode the same
layout lives in anonymous memory and :meth:`HttpRecorder.collect` reads it.

The in-flight gauge is the other half: the middleware appends each request's method to ``started``
(one C-level call); :meth:`HttpRecorder.flush`, run by the worker's sampler, counts them and subtracts
the requests the series have recorded since.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
import weakref
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

import prometheus_client.metrics
from prometheus_client import Gauge
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.mmap_dict import mmap_key
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import INF, floatToGoString

from asyncproof.monitoring.contract import OTHER_METHOD, STANDARD_METHODS, MetricSpec

# (method, route, status, *extra label values): one series, status as the int the app sent
Key = tuple[Any, ...]
# a series: its bucket counts, then its sum (doubles, written in place)
Cells: TypeAlias = "memoryview[float]"

FILE_PREFIX = "histogram_asyncproof_"
# Address space reserved per process. Pages are only allocated (and, for a file, only written) as
# series are added, some 5 KiB each with the contract's buckets: the file (sparse) holds about
# 100,000 label sets, anonymous memory (single-process mode, kept small where memory is committed
# up front) about 12,000.
FILE_CAPACITY = 512 << 20
MEMORY_CAPACITY = 64 << 20
_HEADER = struct.Struct("i")


class SeriesLimitError(RuntimeError):
    """The per-process series space is full (far more label sets than routes x methods x statuses)."""


class SeriesFile:
    """Append-only doubles in prometheus_client's mmap layout: a file, or anonymous memory.

    The layout is ``int32 used``, 4 bytes of padding, then entries of ``int32 key length``, the UTF-8
    JSON key padded to 8-byte alignment, the value and a timestamp (two doubles).
    """

    def __init__(self, path: str | None = None, capacity: int | None = None) -> None:
        self.path = path
        if capacity is None:
            capacity = MEMORY_CAPACITY if path is None else FILE_CAPACITY
        if path is None:
            self._map = mmap.mmap(-1, capacity)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, capacity)  # sparse: blocks are allocated as pages are written
                self._map = mmap.mmap(fd, capacity)
            finally:
                os.close(fd)
        self.cells: Cells = memoryview(self._map).cast("d")
        self._lock = threading.Lock()
        self.used = 8
        self._map[0:4] = _HEADER.pack(self.used)

    def add(self, keys: Sequence[str]) -> Cells:
        """Append a zero entry per key, all of one size; returns a view of their values, in order."""
        with self._lock:
            return self._add(keys)

    def _add(self, keys: Sequence[str]) -> Cells:
        encoded = [key.encode("utf-8") for key in keys]
        width = max(len(key) for key in encoded)
        padded = width + 8 - (width + 4) % 8  # prometheus_client's padding rule
        entry = struct.Struct(f"i{padded}sdd")
        blob = b"".join(entry.pack(width, key.ljust(padded), 0.0, 0.0) for key in encoded)
        start = self.used
        if start + len(blob) > len(self._map):
            raise SeriesLimitError(
                f"no room for another HTTP series ({len(self._map) >> 20} MiB of label sets in this "
                "process): an extra label or route label has far too many values"
            )
        self._map[start : start + len(blob)] = blob
        self.used = start + len(blob)
        # Written last, in one store: a reader sees the new entries complete or not at all.
        self._map[0:4] = _HEADER.pack(self.used)
        first, stride = (start + 4 + padded) // 8, entry.size // 8
        return self.cells[first : first + stride * len(keys) : stride]


class _Series(dict[Key, Cells]):
    """Label set -> memoryview of its bucket counts and sum; ``__missing__`` adds a series."""

    def __init__(self, recorder: HttpRecorder) -> None:
        super().__init__()
        self._recorder = weakref.ref(recorder)

    def __missing__(self, key: Key) -> Cells:
        recorder = self._recorder()
        assert recorder is not None
        with recorder.lock:  # once per label set
            found = self.get(key)
            if found is None:
                found = self[key] = recorder.add_series(key)
        return found


_recorders: weakref.WeakSet[HttpRecorder] = weakref.WeakSet()
# One file per process and folder, shared by every recorder (registry) of the process: the scrape
# sums entries with the same key, so two registries' series add up as they would in one.
_files: dict[str, SeriesFile] = {}
_files_made = threading.Lock()


def _process_file(folder: str) -> SeriesFile:
    with _files_made:
        found = _files.get(folder)
        if found is None:
            name = f"{FILE_PREFIX}{os.getpid()}.db"
            if os.path.exists(os.path.join(folder, name)):  # a dead process had this pid, not retired yet
                from asyncproof.monitoring.multiprocess import retire_file

                retire_file(folder, name, "histogram")
            found = _files[folder] = SeriesFile(os.path.join(folder, name))
        return found


def _forget_parent_series() -> None:
    # A forked worker (Gunicorn's preload) starts with its own series, in its own file.
    global _files_made
    _files_made = threading.Lock()
    _files.clear()
    for recorder in list(_recorders):
        recorder.after_fork()


os.register_at_fork(after_in_child=_forget_parent_series)


class HttpRecorder(Collector):
    """Series storage for the request histogram, and the in-flight counts.

    ``multiprocess_dir``: where each process writes its file; ``None`` keeps the series in this
    process's memory, exported by :meth:`collect` (register the recorder in a registry).
    """

    def __init__(
        self,
        spec: MetricSpec,
        active: Gauge,
        *,
        buckets: Sequence[float],
        extra_labels: Sequence[str] = (),
        multiprocess_dir: str | None = None,
    ) -> None:
        self.spec = spec
        self.labelnames = (*spec.labels, *extra_labels)
        self.bounds: tuple[float, ...] = (*buckets, INF)
        go_float: Callable[[float], str] = floatToGoString  # how prometheus_client spells ``le``
        self._le = [go_float(bound) for bound in self.bounds]
        self.multiprocess_dir = multiprocess_dir
        self.lock = threading.Lock()
        self.series = _Series(self)
        self._created: dict[Key, float] = {}
        self._store: SeriesFile | None = None
        self._pid = os.getpid()
        # Methods of the requests started since the last flush (the middleware appends), and totals.
        self.started: list[str] = []
        self._started_total: Counter[str] = Counter()
        # Requests of apps whose BackgroundTasks do not count as in flight: responses complete (or
        # requests ended without one), and how many of those the series have recorded.
        self.responded: dict[str, int] = dict.fromkeys(sorted(STANDARD_METHODS | {OTHER_METHOD}), 0)
        self.foreground_recorded: dict[str, int] = dict.fromkeys(self.responded, 0)
        self._active_gauge = active
        self._active_children: dict[str, Any] = {}
        _recorders.add(self)

    # -- storage --------------------------------------------------------------------------------------

    def add_series(self, key: Key) -> Cells:
        """Entries for one label set: a count per bucket, then the sum. Called with ``lock`` held."""
        if self._store is None:
            self._store = _process_file(self.multiprocess_dir) if self.multiprocess_dir else SeriesFile()
        self._created[key] = time.time()  # single-process mode exports it, as prometheus_client does
        values = [str(value) for value in key]
        name, help_text = self.spec.name, self.spec.help
        keys = [
            mmap_key(name, f"{name}_bucket", [*self.labelnames, "le"], [*values, le], help_text)
            for le in self._le
        ]
        keys.append(mmap_key(name, f"{name}_sum", list(self.labelnames), values, help_text))
        return self._store.add(keys)

    def after_fork(self) -> None:
        """In a forked child: drop the parent's series and memory; the first request makes new ones."""
        self.lock = threading.Lock()
        dict.clear(self.series)
        self._created.clear()
        self._store = None
        self._pid = os.getpid()
        self.started.clear()
        self._started_total.clear()
        self._active_children.clear()
        for counts in (self.responded, self.foreground_recorded):
            for method in counts:
                counts[method] = 0

    def record(self, key: Key, seconds: float) -> None:
        """Record one request (the middleware inlines this for its common case)."""
        series = self.series[key]
        series[bisect_left(self.bounds, seconds)] += 1.0
        series[-1] += seconds

    # -- in-flight gauge -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Set the in-flight gauge from requests started minus requests recorded. Safe from any thread."""
        with self.lock:
            started = self.started
            count = len(started)  # appends that land meanwhile wait for the next flush
            self._started_total.update(started[:count])
            del started[:count]
            recorded: defaultdict[str, float] = defaultdict(float)
            for key, series in list(self.series.items()):
                recorded[key[0]] += sum(series[:-1])
            for method, total in self._started_total.items():
                gauge = self._active_children.get(method)
                if gauge is None:
                    gauge = self._active_children[method] = self._active_gauge.labels(method)
                # foreground requests stop counting when their response is complete
                done = recorded[method] - self.foreground_recorded[method] + self.responded[method]
                gauge.set(total - done)

    # -- single-process exposition ---------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.spec.name, self.spec.help, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.spec.name, self.spec.help, labels=self.labelnames)
        for key, series in sorted(self.series.items(), key=lambda item: str(item[0])):
            values = series.tolist()
            buckets, running = [], 0.0
            for le, count in zip(self._le, values, strict=False):
                running += count
                buckets.append((le, running))
            labels = [str(value) for value in key]
            family.add_metric(labels, buckets, values[-1])
            if prometheus_client.metrics._use_created:  # unless disable_created_metrics() was called
                created = dict(zip(self.labelnames, labels, strict=True))
                family.samples.append(Sample(f"{self.spec.name}_created", created, self._created[key]))
        return [family]
