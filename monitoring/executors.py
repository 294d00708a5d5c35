"""Saturation of ``concurrent.futures`` pools: the event loop's default executor and the pools an app watches.

Nothing wraps ``submit()``: the runtime sampler reads each pool's own bookkeeping on its ticks, in the
loop's thread, a few attribute reads per pool. The attributes are CPython's private ones, present and
with the same meaning in 3.11, 3.12 and 3.13; a pool that lacks one (another Python, a later
version) goes without the gauge that needs it, and the fact is logged once.

``ThreadPoolExecutor``
    pending: ``_work_queue.qsize()`` (submitted, not taken by a thread). busy: the pool's threads
    (``_threads``) with ``_WorkItem.run`` on their stack, read from ``sys._current_frames()``
    (``_idle_semaphore`` over-counts idle threads on 3.11); while work is queued no thread stays
    idle for longer than a wake-up, so then every thread counts as busy. After ``shutdown()`` the
    threads still alive are the busy ones.
``ProcessPoolExecutor``
    ``_pending_work_items`` holds every work item not finished; ``_work_ids`` those not yet sent to
    the children. The sent ones run in a child or wait in the call queue (at most one more than there
    are processes): busy is the sent ones up to ``len(_processes)`` (a child still starting counts
    as busy with the item it will take), the rest are pending.

A tick with three pools costs about 10 microseconds; gauges are set only when a figure changed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import thread as _thread_module
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from asyncproof.monitoring.contract import DEFAULT_EXECUTOR

if TYPE_CHECKING:
    from asyncproof.monitoring.metrics import Metrics

logger = logging.getLogger("asyncproof.runtime")

_WORKER_CODE = _thread_module._worker.__code__  # a pool thread's loop: waiting for work, or running it
_RUN_CODE = _thread_module._WorkItem.run.__code__  # one work item, called from that loop

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}")


class Reading(NamedTuple):
    """One pool's figures; ``None`` where the pool lacks what that figure is read from."""

    pending: int | None
    busy: int | None
    max_workers: int | None
    finished: bool  # shut down with nothing left running: no longer reported


T = TypeVar("T")


def _get(missing: list[str], read: Callable[[], T]) -> T | None:
    try:
        return read()
    except AttributeError as error:
        missing.append(str(error.name))
        return None


def _thread_pool(pool: Any, missing: list[str]) -> Reading:
    max_workers = _get(missing, lambda: int(pool._max_workers))
    queued = _get(missing, lambda: int(pool._work_queue.qsize()))
    threads = _get(missing, lambda: list(pool._threads))
    if getattr(pool, "_shutdown", False) or getattr(pool, "_broken", False):
        alive = None if threads is None else sum(thread.is_alive() for thread in threads)
        # Exiting threads pass one `None` along the queue to each other: it is no work.
        pending = None if queued is None else max(0, queued - 1)
        return Reading(pending, alive, max_workers, finished=alive == 0)
    busy: int | None = None
    if threads is not None:
        if queued:
            busy = len(threads)
        else:
            # Read from the threads' stacks: _idle_semaphore, which 3.12 and 3.13 keep exact,
            # over-counts idle threads on 3.11 (released after every item, not only when the queue
            # is empty).
            frames = sys._current_frames()
            busy = sum(_running_an_item(frames.get(thread.ident or -1)) for thread in threads)
            del frames
    return Reading(queued, busy, max_workers, finished=False)


def _running_an_item(frame: Any) -> bool:
    """Whether a pool thread whose innermost frame is ``frame`` runs a work item: ``_WorkItem.run``
    is on its stack below the pool's ``_worker`` loop (waiting on the queue, or releasing the idle
    semaphore between two items, it is not)."""
    while frame is not None:
        code = frame.f_code
        if code is _RUN_CODE:
            return True
        if code is _WORKER_CODE:
            return False
        frame = frame.f_back
    return False


def _process_pool(pool: Any, missing: list[str]) -> Reading:
    max_workers = _get(missing, lambda: int(pool._max_workers))
    unfinished = _get(missing, lambda: len(pool._pending_work_items))
    not_sent = _get(missing, lambda: int(pool._work_ids.qsize()))
    shut_down = bool(getattr(pool, "_shutdown_thread", False))
    if unfinished is None or not_sent is None:
        return Reading(None, None, max_workers, finished=False)
    # None once shut down, while children may still be finishing: then the cap is the pool's size.
    processes = getattr(pool, "_processes", None)
    running = len(processes) if processes is not None else max_workers
    sent = max(0, unfinished - not_sent)
    busy = sent if running is None else min(sent, running)
    return Reading(unfinished - busy, busy, max_workers, finished=shut_down and unfinished == 0)


Reader = Callable[[Any, list[str]], Reading]


def _reader(executor: Executor) -> Reader:
    if isinstance(executor, ThreadPoolExecutor):
        return _thread_pool
    if isinstance(executor, ProcessPoolExecutor):
        return _process_pool
    raise TypeError(
        "watch_executor() reads concurrent.futures.ThreadPoolExecutor and ProcessPoolExecutor (and their "
        f"subclasses), got {type(executor).__name__}"
    )


def default_executor(loop: asyncio.AbstractEventLoop) -> ThreadPoolExecutor | None:
    """The loop's default executor, ``None`` until the first ``run_in_executor(None, ...)``.

    asyncio keeps it in ``loop._default_executor``. uvloop keeps it in a C field of the same name that
    Python cannot read, but the loop's references (what the garbage collector traverses) include it,
    and it is the only executor among them.
    """
    if hasattr(loop, "_default_executor"):
        found = loop._default_executor
        return found if isinstance(found, ThreadPoolExecutor) else None
    executors = [ref for ref in gc.get_referents(loop) if isinstance(ref, ThreadPoolExecutor)]
    return executors[0] if len(executors) == 1 else None


class WatchedExecutors:
    """The pools whose saturation one registry's metrics report (``Metrics.executors``).

    ``executor_pending_work_items``, ``executor_busy_workers`` and ``executor_max_workers``, labelled
    ``executor=name``: each watched pool under its name and the loop's default executor as
    ``default``, once it exists. Pools are held weakly: one that is garbage-collected, or shut down
    with nothing left running, leaves the figures (its series go in single-process mode; in
    multiprocess mode, where prometheus_client cannot remove a label set, they drop to 0).
    """

    def __init__(self, metrics: Metrics) -> None:
        self._gauges = (metrics.executor_pending, metrics.executor_busy, metrics.executor_max)
        self._removable = not metrics.multiprocess
        self._lock = threading.Lock()
        self._watched: dict[str, weakref.ref[Executor]] = {}
        self._reported: set[str] = set()
        # Each name's three labelled gauges, and the figures they were last set to.
        self._children: dict[str, dict[Any, Any]] = {}
        self._last: dict[str, tuple[int | None, ...]] = {}
        self._pid = os.getpid()
        self._logged: set[tuple[str, str]] = set()  # (executor name, missing attribute or '')

    def watch(self, executor: Executor, name: str) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"executor name {name!r} must be 1 to 64 letters, digits, '_', '.', ':' or '-' "
                "(it becomes the executor label), e.g. 'reports'"
            )
        if name == DEFAULT_EXECUTOR:
            raise ValueError(
                f"executor name {DEFAULT_EXECUTOR!r} is the event loop's default executor, reported "
                "without being watched; give this pool another name"
            )
        _reader(executor)  # a TypeError for a kind of pool that cannot be read
        with self._lock:
            held = self._watched.get(name)
            current = held() if held is not None else None
            if current is executor:
                return
            if current is not None and not self._read(name, current).finished:
                raise ValueError(
                    f"another executor is already watched as {name!r}; give this one another name "
                    "(a pool that is shut down, with nothing left running, frees its name)"
                )
            for other, ref in self._watched.items():
                if ref() is executor:  # it would be counted twice
                    raise ValueError(f"this executor is already watched as {other!r}")
            self._watched[name] = weakref.ref(executor)

    def unwatch(self, name: str) -> None:
        """Stop reporting the pool watched as ``name`` (nothing happens if there is none)."""
        with self._lock:
            self._watched.pop(name, None)

    def sample(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Read every watched pool (and ``loop``'s default executor) and set the gauges."""
        with self._lock:
            watched = list(self._watched.items())
        pools: list[tuple[str, Executor]] = []
        gone: list[tuple[str, weakref.ref[Executor]]] = []
        for name, ref in watched:
            pool = ref()
            if pool is None:
                gone.append((name, ref))
            else:
                pools.append((name, pool))
        default = default_executor(loop) if loop is not None else None
        if default is not None and all(default is not pool for _, pool in pools):
            pools.append((DEFAULT_EXECUTOR, default))
        if os.getpid() != self._pid:  # a forked child writes files of its own: set everything again
            self._pid = os.getpid()
            self._last.clear()
        reported: set[str] = set()
        for name, pool in pools:
            try:
                reading = self._read(name, pool)
            except Exception:  # never let one pool stop the sampler's tick
                self._log_once(name, "", "executor %r could not be read", name, exc_info=True)
                continue
            if reading.finished:
                gone.extend((n, r) for n, r in watched if n == name)
                continue
            reported.add(name)
            values = reading[:3]
            if self._last.get(name) == values:
                continue
            self._last[name] = values
            children = self._children.setdefault(name, {})
            for gauge, value in zip(self._gauges, values, strict=True):
                if value is not None:  # a figure this pool cannot give stays out of the scrape
                    child = children.get(gauge)
                    if child is None:
                        child = children[gauge] = gauge.labels(name)
                    child.set(value)
        if gone:
            with self._lock:
                for name, ref in gone:
                    if self._watched.get(name) is ref:  # not watched again meanwhile
                        del self._watched[name]
        for name in self._reported - reported:
            self._last.pop(name, None)
            for child in self._children.pop(name, {}).values():
                child.set(0)
            if self._removable:
                for gauge in self._gauges:
                    gauge.remove(name)
        self._reported = reported

    def _read(self, name: str, pool: Executor) -> Reading:
        missing: list[str] = []
        reading = _reader(pool)(pool, missing)
        for attribute in missing:
            self._log_once(
                name,
                attribute,
                "executor %r: %s has no attribute %r on this Python; the executor_* figures that need "
                "it are not reported",
                name,
                type(pool).__name__,
                attribute,
            )
        return reading

    def _log_once(self, name: str, what: str, message: str, *args: object, exc_info: bool = False) -> None:
        if (name, what) not in self._logged:
            self._logged.add((name, what))
            logger.warning(message, *args, exc_info=exc_info)


def watch_executor(executor: Executor, name: str, metrics: Metrics) -> None:
    """Report the saturation of ``executor`` (a ``concurrent.futures.ThreadPoolExecutor`` or
    ``ProcessPoolExecutor``) as ``executor_pending_work_items``, ``executor_busy_workers`` and
    ``executor_max_workers`` with ``executor=name``, read on each tick of the runtime sampler.

    Call it once per pool, right after creating it; :meth:`Instrumentation.watch_executor` is the same
    call with the app's metrics. The loop's default executor is reported as ``executor="default"``
    without this. ``name`` is a label value (letters, digits, ``_.:-``, at most 64); watching another
    pool under a name in use is a ``ValueError``, unless the pool watched under it is shut down with
    nothing left running. Watching does not keep the pool alive.
    """
    metrics.executors.watch(executor, name)
