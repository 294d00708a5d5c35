"""Multiprocess (Gunicorn / ``uvicorn --workers``) exposition that stays correct and fast.

prometheus_client keeps one mmap file per metric type per worker in ``PROMETHEUS_MULTIPROC_DIR`` and
sums them at scrape time. Its ``mark_process_dead`` removes a dead worker's live-gauge files but keeps
its counter and histogram files forever (their counts must not vanish), so after hundreds of worker
restarts every scrape parses hundreds of files. Here a dead worker's counter and histogram files are
merged into one ``<type>_archive.db`` per type and removed, under an exclusive lock that scrapes take
shared, so a scrape never sees a count twice or not at all, and its cost stays flat.

The merge is incremental. prometheus_client's ``MultiProcessCollector`` parses every entry of every
file (a JSON key each) and builds a ``Sample`` per entry at every scrape; a worker's file of 200
routes holds 7,200 entries. Those files only grow, so :class:`MultiprocessCollector` maps each big
file once, parses only the entries added since the previous scrape (each distinct key once, however
many workers' files hold it), and keeps a plan of which merged sample each entry adds to
(:class:`_Plan`, made again only when a file comes, goes or grows). A scrape then reads each value
through a ``memoryview`` of the map at its known offset and adds it in. The answer is the one
prometheus_client's ``merge(files, accumulate=True)`` gives for the same files, float for float and
in the same order (values are added as it adds them: files as the folder lists them, entries in file
order): types from file names (``histogram_asyncproof_<pid>.db`` is a histogram file like any
other), gauge modes (``all``/``liveall`` keep a ``pid`` label; ``sum``, ``max``, ``min``,
``mostrecent`` by timestamp), cumulative histogram buckets and their ``_count``, label and sample
order. A metric whose files disagree on its type or gauge mode is left to prometheus_client's own
merge; files it would fail on (a name that is no metric type) are skipped.

Measured with ``benchmarks/scrape.py`` on a 2-core machine, 8 workers x 200 routes (57,600 entries,
7,667 samples): a scrape with :mod:`asyncproof.monitoring.render` costs 25-30 ms (read 0.3, merge
15, render 10), prometheus_client's collector and ``generate_latest`` 500-800 ms, and stays so
after 100 worker restarts (prometheus_client's: 6 s). The first scrape after a restart, which parses
the new worker's file and makes a new plan, costs 100-300 ms.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import itertools
import json
import mmap
import os
import re
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import psutil
from prometheus_client import multiprocess as _pmp
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from asyncproof.monitoring import contract
from asyncproof.monitoring.recorder import FILE_PREFIX as HTTP_FILE_PREFIX
from asyncproof.monitoring.render import go_float

LOCK_FILE = ".asyncproof.lock"
ARCHIVE_PID = "archive"
_ARCHIVED_TYPES = ("counter", "histogram", "summary")
_PID_FILE = re.compile(r"^[a-z]+_(?:[a-z]+_)?(\d+)\.db$")
# Per-worker counters are stored as `liveall` gauges (so they carry a pid and go with their worker)
# and shown as the counters they are.
_PER_PROCESS_COUNTERS = {
    spec.exposed_name: spec for spec in contract.ALL_METRICS if spec.per_process and spec.kind == "counter"
}


_HEADER = struct.Struct("i")
_SMALL = 1 << 16  # bytes: a file no bigger is read whole at each scrape, a bigger one mapped
_new = tuple.__new__
_TYPES = ("counter", "gauge", "histogram", "summary")
# Gauge modes whose workers' values make one series; the others keep each worker's, with a pid label.
_POOLED_MODES = ("min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent")
_COMBINE = {"sum": "sum", "max": "max", "min": "min", "mostrecent": "latest"}

Labels = tuple[tuple[str, str], ...]
# What an entry adds to: (metric, sample name, labels, le). ``le`` is a histogram bucket's bound (its
# labels then lack ``le``), None for every other sample.
_Key = tuple[str, str, Labels, float | None]
# An entry's metric, the help text its key carries, and the number its key goes by.
_Entry = tuple[str, str, int]


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
        for padded, value, timestamp, _ in MmapedDict.read_all_values_from_file(source):
            key = padded.rstrip()  # the request histogram's keys are padded to one length per series
            current, _ = archive.read_value(key)
            archive.write_value(key, current + value, timestamp)
    finally:
        archive.close()
    os.remove(source)


def mark_process_dead(pid: int, path: str | None = None, *, unless_alive: bool = False) -> None:
    """Retire a dead worker: drop its live gauges, fold its counters and histograms into the archive.

    ``unless_alive``: look again under the lock, and leave the files if a process has the pid (a new
    worker may have been given it while this waited for a scrape to end)."""
    path = path or multiprocess_dir()
    if not path:
        raise ValueError("no multiprocess folder: set PROMETHEUS_MULTIPROC_DIR or pass path")
    with _locked(path, fcntl.LOCK_EX):
        if unless_alive and _alive(pid):
            return
        _pmp.mark_process_dead(pid, path)
        sources = [(f"{typ}_{pid}.db", typ) for typ in _ARCHIVED_TYPES]
        sources.append((f"{HTTP_FILE_PREFIX}{pid}.db", "histogram"))  # the request histogram's own file
        for name, typ in sources:
            source = os.path.join(path, name)
            if os.path.exists(source):  # another sweeper may have archived it already
                _archive_file(path, source, typ)


def retire_file(path: str, name: str, typ: str) -> None:
    """Fold one file left by a dead process into the archive: a new process was given its pid."""
    with _locked(path, fcntl.LOCK_EX):
        source = os.path.join(path, name)
        if os.path.exists(source):
            _archive_file(path, source, typ)


def worker_pids(path: str) -> set[int]:
    """Pids that own metric files in ``path``."""
    pids = set()
    for name in os.listdir(path):
        match = _PID_FILE.match(name)
        if match:
            pids.add(int(match.group(1)))
    return pids


def sweep(path: str | None = None, *, wait: bool = True) -> list[int]:
    """Retire every worker whose files remain but whose process is gone; returns their pids.

    Servers without a ``child_exit`` hook (``uvicorn --workers``) rely on this; the workers run it
    periodically, with ``wait=False`` (on their event loop: when a scrape holds the folder, they
    leave the sweep to the next tick instead of waiting for it).
    """
    path = path or multiprocess_dir()
    if not path:
        return []
    dead = [pid for pid in worker_pids(path) if not _alive(pid)]
    if dead and not wait:
        try:
            with _locked(path, fcntl.LOCK_EX | fcntl.LOCK_NB):
                pass
        except BlockingIOError:
            return []
    for pid in dead:
        mark_process_dead(pid, path, unless_alive=True)
    return dead


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kind(name: str) -> tuple[str, str, str] | None:
    """(type, gauge mode, pid of a gauge) as prometheus_client reads them from a file's name, or None
    for a file it would not read (or would fail on)."""
    if not name.endswith(".db") or name.startswith("."):
        return None
    parts = name.split("_")
    if parts[0] not in _TYPES:
        return None
    if parts[0] != "gauge":
        return parts[0], "", ""
    return ("gauge", parts[1], parts[2][:-3]) if len(parts) > 2 else None


def _combine(typ: str, mode: str) -> str:
    """How a sample's values in several files make one: sum, max, min, latest (by timestamp), last."""
    return _COMBINE.get(mode.removeprefix("live"), "last") if typ == "gauge" else "sum"


def _entry(typ: str, mode: str, pid: str, key: bytes) -> tuple[str, str, _Key]:
    """What one entry of a file of this kind adds to, labelled as prometheus_client's merge labels it."""
    metric, name, labels, help_text = json.loads(key.decode("utf-8"))
    items: Labels = tuple(sorted(labels.items()))
    if typ == "gauge":
        items += (("pid", pid),)
        if mode in _POOLED_MODES:
            items = tuple(item for item in items if item[0] != "pid")
    elif typ == "histogram":
        for label, value in items:
            if label == "le":
                bucket = tuple(item for item in items if item[0] != "le")
                return metric, help_text, (metric, f"{metric}_bucket", bucket, float(value))
    return metric, help_text, (metric, name, items, None)


class _File:
    """One file as far as scrapes have read it: where each entry's value lies and what it adds to.

    prometheus_client's files only grow, so a scrape parses only the entries added since the last
    one. A file is mapped once it holds more than :data:`_SMALL` bytes (a worker's histogram file,
    the archive); the map keeps its inode in use, so a file removed and made again under the same
    name (a wipe, a reused pid) has another inode, and one rewritten in place shows a smaller
    ``used`` or other bytes where the first and last keys read were. A small file (a worker's gauges)
    is read and parsed whole at each scrape instead: a map holds a file descriptor, and the files of
    dead workers' ``all``-mode gauges stay for good.
    """

    def __init__(self, path: str, typ: str, mode: str, pid: str, stat: os.stat_result) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self.typ, self.mode, self.pid = typ, mode, pid
        self.combine = _combine(typ, mode)
        self.inode = (stat.st_dev, stat.st_ino)
        self.map: mmap.mmap | None = None
        self.cells = memoryview(b"").cast("d")  # the file as doubles
        self._forget()

    def _forget(self) -> None:
        self.used = 8  # parsed up to here
        self.offsets: list[int] = []  # of each entry's value, in doubles; its timestamp follows
        self.ids: list[int] = []  # of each entry's key
        self.helps: dict[str, str] = {}  # metric -> help of its first entry, in the file's order
        self._marks: list[tuple[int, bytes]] = []  # (offset, bytes) of the first and last key parsed

    def refresh(self, stat: os.stat_result, resolve: Callable[[_File, bytes], _Entry]) -> bool | None:
        """Parse the entries added since; whether there were any, or None if this is another file now."""
        if (stat.st_dev, stat.st_ino) != self.inode:
            return None
        if self.map is None and stat.st_size <= _SMALL:
            return self._reread(resolve)
        if self.map is None or len(self.map) < stat.st_size:
            with open(self.path, "rb") as source:
                self.map = mmap.mmap(source.fileno(), stat.st_size, access=mmap.ACCESS_READ)
            self.cells = memoryview(self.map)[: len(self.map) // 8 * 8].cast("d")
        elif len(self.map) > stat.st_size:  # truncated: reading the map past the end would crash
            return None
        used = max(_HEADER.unpack_from(self.map, 0)[0], 8)
        if used < self.used or any(self.map[at : at + len(key)] != key for at, key in self._marks):
            return None
        if used == self.used:
            return False
        self._parse(self.map, used, resolve)
        return True

    def _reread(self, resolve: Callable[[_File, bytes], _Entry]) -> bool:
        with open(self.path, "rb") as source:
            data = source.read(8)
            used = max(_HEADER.unpack_from(data, 0)[0], 8)
            data += source.read(used - len(data))
        before = self.ids, self.offsets
        self._forget()
        self._parse(data, used, resolve)
        self.cells = memoryview(data)[: len(data) // 8 * 8].cast("d")
        return (self.ids, self.offsets) != before

    def _parse(self, data: bytes | mmap.mmap, used: int, resolve: Callable[[_File, bytes], _Entry]) -> None:
        if used > len(data):
            raise RuntimeError(f"{self.path} says it uses more than its size: the file is corrupted")
        pos = self.used
        while pos < used:
            (length,) = _HEADER.unpack_from(data, pos)
            if length + pos > used:
                raise RuntimeError(f"Read beyond file size detected in {self.path}, file is corrupted.")
            key = data[pos + 4 : pos + 4 + length]
            self._marks[1:] = [(pos + 4, key)]
            pos += 4 + length + 8 - (length + 4) % 8  # prometheus_client's padding: 1 to 8 bytes
            metric, help_text, key_id = resolve(self, key)
            self.helps.setdefault(metric, help_text)
            self.ids.append(key_id)
            self.offsets.append(pos // 8)
            pos += 16
        self.used = used


@dataclass
class _Family:
    name: str
    help: str
    typ: str
    combine: str
    samples: list[tuple[str, dict[str, str], int]]  # (name, labels, slot), in prometheus_client's order


class _Plan:
    """What a scrape of these files shows, and which slot each file's entries add to.

    Made again only when a file comes, goes or grows. Slots are the merged samples: one per key, and
    one per histogram series for its ``_count``. Families, series and samples come in the order
    prometheus_client's merge gives them.
    """

    def __init__(self, files: list[_File], keys: dict[int, _Key]) -> None:
        self.files = files
        kinds: dict[str, tuple[str, str, str]] = {}  # metric -> (type, gauge mode, help)
        self.mixed: set[str] = set()
        # key id -> slot, keys in the order they first appear (dict operations in C: this runs over
        # every entry of every file)
        self.slot_of: dict[int, int] = {}
        for file in files:
            for metric, help_text in file.helps.items():
                typ, mode, _ = kinds.setdefault(metric, (file.typ, file.mode, help_text))
                if (typ, mode) != (file.typ, file.mode):
                    self.mixed.add(metric)
            self.slot_of.update(dict.fromkeys(file.ids, 0))
        # metric -> labels -> (sample name, labels) -> slot: prometheus_client's grouping
        groups: dict[str, dict[Labels, dict[tuple[str, Labels], int]]] = {}
        buckets: dict[str, dict[Labels, dict[float, int]]] = {}  # metric -> labels -> le -> slot
        for slot, key_id in enumerate(self.slot_of):
            self.slot_of[key_id] = slot
            metric, name, labels, le = keys[key_id]
            if le is None:
                groups.setdefault(metric, {}).setdefault(labels, {})[name, labels] = slot
            else:
                buckets.setdefault(metric, {}).setdefault(labels, {})[le] = slot
        self.slots = [list(map(self.slot_of.__getitem__, file.ids)) for file in files]
        self.size = len(self.slot_of)
        bounds_text: dict[float, str] = {}
        self.histograms: list[tuple[list[int], int]] = []  # (bucket slots by le, _count slot)
        for metric, series in buckets.items():
            for labels, bounds in series.items():
                group = groups.setdefault(metric, {}).setdefault(labels, {})
                ordered = sorted(bounds)
                for le in ordered:
                    text = bounds_text.get(le) or bounds_text.setdefault(le, go_float(le))
                    group[f"{metric}_bucket", (*labels, ("le", text))] = bounds[le]
                group[f"{metric}_count", labels] = self.size
                self.histograms.append(([bounds[le] for le in ordered], self.size))
                self.size += 1
        self.families = [
            _Family(
                metric,
                help_text,
                typ,
                _combine(typ, mode),
                [
                    (name, dict(labels), slot)
                    for group in groups.get(metric, {}).values()
                    for (name, labels), slot in group.items()
                ],
            )
            for metric, (typ, mode, help_text) in kinds.items()
        ]


class MultiprocessCollector(Collector):
    """Sums every worker's files (and the archive) into one view, under the folder's shared lock.

    The result is what prometheus_client's ``MultiProcessCollector.merge(files, accumulate=True)``
    gives for the same files (see the module docstring); only new entries of a file are parsed.
    """

    def __init__(self, path: str) -> None:
        if not os.path.isdir(path):
            raise ValueError(
                f"multiprocess folder {path!r} does not exist; create it before starting workers"
            )
        self.path = path
        self._lock = threading.Lock()  # the caches below are one scrape's at a time
        self._files: dict[str, _File] = {}
        self._entries: dict[tuple[str, str, str, bytes] | tuple[str, bytes], _Entry] = {}
        # Keys go by a number: the plan, made again over every entry, hashes ints, not nested tuples.
        self._keys: dict[int, _Key] = {}
        self._key_ids: dict[_Key, int] = {}
        self._next_id = itertools.count()
        self._plan = _Plan([], {})

    def collect(self) -> Iterable[Metric]:
        with self._lock, _locked(self.path, fcntl.LOCK_SH):
            metrics = self._merge(self._read())
        return [_as_counter(m) if m.name in _PER_PROCESS_COUNTERS else m for m in metrics]

    def _read(self) -> _Plan:
        """Bring every file's cache up to date; a new plan when any file came, went or grew."""
        files: list[_File] = []
        changed = False
        for name in os.listdir(self.path):
            kind = _kind(name)
            read = None if kind is None else self._refresh(name, kind)
            if read is not None:
                files.append(read[0])
                changed = changed or read[1]
        for name in self._files.keys() - {file.name for file in files}:
            del self._files[name]
        if changed or files != self._plan.files:
            self._plan = _Plan(files, self._keys)
            live = self._plan.slot_of
            self._keys = {key_id: self._keys[key_id] for key_id in live}
            self._key_ids = {key: key_id for key_id, key in self._keys.items()}
            self._entries = {k: e for k, e in self._entries.items() if e[2] in live}
        return self._plan

    def _refresh(self, name: str, kind: tuple[str, str, str]) -> tuple[_File, bool] | None:
        """The file's cache, brought up to date, and whether it has new entries; None if it is gone."""
        path = os.path.join(self.path, name)
        try:
            stat = os.stat(path)
            file = self._files.get(name)
            grew = None if file is None else file.refresh(stat, self._resolve)
            if file is None or grew is None:
                if stat.st_size < 8:  # being made: not even its header yet
                    self._files.pop(name, None)
                    return None
                file = self._files[name] = _File(path, *kind, stat)
                grew = file.refresh(stat, self._resolve)
        except FileNotFoundError:  # a live gauge's file, removed by prometheus_client's mark_process_dead
            self._files.pop(name, None)
            return None
        except BaseException:
            self._files.pop(name, None)  # perhaps half parsed: read afresh next time
            raise
        return file, bool(grew)

    def _resolve(self, file: _File, key: bytes) -> _Entry:
        # Every worker's file holds the same keys: each is parsed once (a gauge's once per pid).
        cache_key = (file.typ, file.mode, file.pid, key) if file.typ == "gauge" else (file.typ, key)
        entry = self._entries.get(cache_key)
        if entry is None:
            metric, help_text, target = _entry(file.typ, file.mode, file.pid, key)
            key_id = self._key_ids.get(target)
            if key_id is None:
                key_id = self._key_ids[target] = next(self._next_id)
                self._keys[key_id] = target
            entry = self._entries[cache_key] = metric, help_text, key_id
        return entry

    def _merge(self, plan: _Plan) -> list[Metric]:
        values = [0.0] * plan.size
        stamps: dict[int, float] = {}  # mostrecent gauges: a series shows once a write has a timestamp
        seen: set[int] = set()  # min and max gauges: the first value is the one to beat
        for file, slots in zip(plan.files, plan.slots, strict=True):
            cells = file.cells
            combine = file.combine
            if combine == "sum":
                for slot, at in zip(slots, file.offsets, strict=True):
                    values[slot] += cells[at]
            elif combine == "last":
                for slot, at in zip(slots, file.offsets, strict=True):
                    values[slot] = cells[at]
            elif combine == "latest":
                for slot, at in zip(slots, file.offsets, strict=True):
                    stamp = cells[at + 1]
                    if stamp > stamps.get(slot, 0.0):
                        values[slot] = cells[at]
                        stamps[slot] = stamp
            else:
                for slot, at in zip(slots, file.offsets, strict=True):
                    value = cells[at]
                    if slot not in seen:
                        seen.add(slot)
                        values[slot] = value
                    elif value > values[slot] if combine == "max" else value < values[slot]:
                        values[slot] = value
        for bounds, count in plan.histograms:
            total = 0.0
            for slot in bounds:
                total += values[slot]
                values[slot] = total
            values[count] = total
        rank = {slot: at for at, slot in enumerate(stamps)}  # the order prometheus_client shows them in
        mixed = self._mixed(plan) if plan.mixed else {}
        metrics = []
        for family in plan.families:
            if family.name in mixed:
                metrics.append(mixed[family.name])
                continue
            metric = Metric(family.name, family.help, family.typ)
            shown = family.samples
            if family.combine == "latest":  # the series written with a timestamp, first written first
                shown = sorted((sample for sample in shown if sample[2] in stamps), key=lambda s: rank[s[2]])
            # tuple.__new__ makes the same Sample as its constructor, at half the cost
            metric.samples = [
                _new(Sample, (name, labels.copy(), values[slot], None, None, None))
                for name, labels, slot in shown
            ]
            metrics.append(metric)
        return metrics

    @staticmethod
    def _mixed(plan: _Plan) -> dict[str, Metric]:
        # Files that disagree on a metric's type or gauge mode (a deploy changed it without a wipe):
        # prometheus_client's own merge, whose answer depends on the order of the files, decides.
        paths = [file.path for file in plan.files if not plan.mixed.isdisjoint(file.helps)]
        merged = _pmp.MultiProcessCollector.merge(paths, accumulate=True)
        return {metric.name: metric for metric in merged if metric.name in plan.mixed}


def _as_counter(metric: Metric) -> Metric:
    spec = _PER_PROCESS_COUNTERS[metric.name]
    counter = Metric(spec.name, spec.help, "counter")
    counter.samples = [Sample(spec.exposed_name, s.labels, s.value) for s in metric.samples]
    return counter
