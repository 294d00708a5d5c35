"""Multiprocess (Gunicorn / ``uvicorn --workers``) exposition that stays correct and fast.

prometheus_client keeps one mmap file per metric type per worker in ``PROMETHEUS_MULTIPROC_DIR`` and
sums them at scrape time. Its ``mark_process_dead`` removes a dead worker's live-gauge files but keeps
its counter and histogram files forever (their counts must not vanish), so after hundreds of worker
restarts every scrape parses hundreds of files. Here a dead worker's counter and histogram files are
merged into one ``<type>_archive.db`` per type and removed, under an exclusive lock that scrapes take
shared, so a scrape never sees a count twice or not at all, and its cost stays flat.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
from collections.abc import Iterable, Iterator

import psutil
from prometheus_client import multiprocess as _pmp
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from asyncproof.monitoring import contract

LOCK_FILE = ".asyncproof.lock"
ARCHIVE_PID = "archive"
_ARCHIVED_TYPES = ("counter", "histogram", "summary")
_PID_FILE = re.compile(r"^[a-z]+_(?:[a-z]+_)?(\d+)\.db$")
# Per-worker counters are stored as `liveall` gauges (so they carry a pid and go with their worker)
# and shown as the counters they are.
_PER_PROCESS_COUNTERS = {
    spec.exposed_name: spec for spec in contract.ALL_METRICS if spec.per_process and spec.kind == "counter"
}


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` (or its legacy lowercase spelling), or ``None`` in single-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112


@contextlib.contextmanager
def _locked(path: str, operation: int) -> Iterator[None]:
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def wipe(path: str) -> None:
    """Empty the folder of metric files left by an earlier run; call once before workers start."""
    os.makedirs(path, exist_ok=True)
    with _locked(path, fcntl.LOCK_EX):
        for name in glob.glob(os.path.join(path, "*.db")):
            os.remove(name)


def _archive_file(path: str, source: str, typ: str) -> None:
    archive = MmapedDict(os.path.join(path, f"{typ}_{ARCHIVE_PID}.db"))
    try:
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(source):
            current, _ = archive.read_value(key)
            archive.write_value(key, current + value, timestamp)
    finally:
        archive.close()
    os.remove(source)


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Retire a dead worker: drop its live gauges, fold its counters and histograms into the archive."""
    path = path or multiprocess_dir()
    if not path:
        raise ValueError("no multiprocess folder: set PROMETHEUS_MULTIPROC_DIR or pass path")
    with _locked(path, fcntl.LOCK_EX):
        _pmp.mark_process_dead(pid, path)
        for typ in _ARCHIVED_TYPES:
            source = os.path.join(path, f"{typ}_{pid}.db")
            if os.path.exists(source):  # another sweeper may have archived it already
                _archive_file(path, source, typ)


def worker_pids(path: str) -> set[int]:
    """Pids that own metric files in ``path``."""
    pids = set()
    for name in os.listdir(path):
        match = _PID_FILE.match(name)
        if match:
            pids.add(int(match.group(1)))
    return pids


def sweep(path: str | None = None) -> list[int]:
    """Retire every worker whose files remain but whose process is gone; returns their pids.

    Servers without a ``child_exit`` hook (``uvicorn --workers``) rely on this; the workers run it
    periodically.
    """
    path = path or multiprocess_dir()
    if not path:
        return []
    dead = [pid for pid in worker_pids(path) if not _alive(pid)]
    for pid in dead:
        mark_process_dead(pid, path)
    return dead


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class MultiprocessCollector(Collector):
    """Sums every worker's files (and the archive) into one view, under the folder's shared lock."""

    def __init__(self, path: str) -> None:
        if not os.path.isdir(path):
            raise ValueError(
                f"multiprocess folder {path!r} does not exist; create it before starting workers"
            )
        self.path = path

    def collect(self) -> Iterable[Metric]:
        with _locked(self.path, fcntl.LOCK_SH):
            files = glob.glob(os.path.join(self.path, "*.db"))
            metrics = list(_pmp.MultiProcessCollector.merge(files, accumulate=True))
        return [_as_counter(m) if m.name in _PER_PROCESS_COUNTERS else m for m in metrics]


def _as_counter(metric: Metric) -> Metric:
    spec = _PER_PROCESS_COUNTERS[metric.name]
    counter = Metric(spec.name, spec.help, "counter")
    counter.samples = [Sample(spec.exposed_name, s.labels, s.value) for s in metric.samples]
    return counter
