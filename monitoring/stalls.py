"""Naming what blocks the event loop: a watchdog thread per loop, nothing on the request path.

A callback on the loop stamps the time every :data:`TICK` seconds and, on Linux, pushes back an
alarm (a timerfd) by the tick and the stall threshold. A daemon thread waits on that alarm, which
fires only once the loop has run no callback for the threshold, so the thread does not wake while
the loop runs (elsewhere it wakes once per threshold and compares the stamp with the clock). On
asyncio's own loop the tick does not wake an idle loop either: when it finds nothing else ready to
run, the loop is about to wait for events and cannot stall until they come, so the tick stops and a
hook in front of the selector's ``select()`` starts it again (and re-arms the alarm) as the loop
wakes, before any callback runs. uvloop waits in C, out of reach: there the tick runs throughout. While
the stall lasts it samples the loop thread's stack (``sys._current_frames()``) every
:data:`SAMPLE_INTERVAL` seconds (less often as a long stall goes on). A stall is attributed

- to a **route**: the innermost ``InstrumentationMiddleware.__call__`` frame on the stack holds the
  request's ``scope``, which gives the label the middleware records (BackgroundTasks run inside that
  frame, so they count for their request's route); with no such frame (start-up, a task the app
  spawned, code a middleware inside ours runs in a task of its own) the route is ``none``;
- to a **place**: the innermost frame that is not the standard library, not an installed package
  and not asyncproof's library (``app/work.py:42 in crunch``), and the **call** it is in: the
  function of the next frame inward (``requests.api.get``), or, when the application frame is the
  innermost one (a C function runs: ``time.sleep``, ``hashlib.pbkdf2_hmac``), the callee named in
  the source of the call being executed. The place of a stall is the most frequent among its
  samples (the first seen on a tie): a stall in a loop that calls several functions is named by
  where it spent most of its time, not by where the watchdog happened to look first.

A stall is taken to start halfway between the last tick the loop ran and the next one it did not
(off by half a tick at most), and to end when the loop runs the tick again. When the loop runs one
request's code and then another's without the tick in between (two ready callbacks in one pass of
the loop, or two requests in one task), the stall is split where the running request (or task)
changes, halfway between the two samples that differ: each part goes to its own route and counts as
a stall of its own once it lasts the threshold; a shorter part counts for nothing. A part first seen
before its request was routed gets the route it has when it counts. A C function that holds the GIL
throughout (``json``'s encoder on a big document) keeps the thread from sampling: such a stall is
counted, with its full length, when the function returns.

Metrics (:mod:`asyncproof.monitoring.contract`): ``asyncio_event_loop_stalls_total{http_route}`` when
a stall is detected, ``asyncio_event_loop_blocked_seconds_total{http_route}`` while it lasts, and
``asyncio_event_loop_stalled_seconds`` (the current stall, 0 while the loop runs). The lag
histogram gets a provisional observation during the stall (in +Inf, the sum growing with it), so
the stall is there even if the worker is killed before its loop runs again; the runtime sampler
moves it to the bucket of the lag it measures itself when the loop resumes, and observes nothing
more for that tick (:class:`ProvisionalLag`; counts and sum never go down).

A record per stall goes to the ``asyncproof.stalls`` logger at WARNING, once the stall is over (and
once while it lasts, when that is longer than :attr:`StallWatchdog.ongoing_after`): the first of each
method, route and place at once, the later ones as one record per :attr:`StallWatchdog.log_interval`
with their count.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import select
import sys
import threading
import time
import types
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asyncproof.monitoring.contract import NO_ROUTE, OTHER_METHOD, STANDARD_METHODS, UNMATCHED_ROUTE
from asyncproof.monitoring.middleware import InstrumentationMiddleware, RequestIdMiddleware
from asyncproof.monitoring.places import APP, call_at, classify, function_name

if TYPE_CHECKING:
    from asyncproof.monitoring.metrics import Metrics

__all__ = ["SAMPLE_INTERVAL", "TICK", "ProvisionalLag", "Stall", "StallWatchdog", "unwatch", "watch"]

log = logging.getLogger("asyncproof.stalls")

TICK = 0.01
"""Seconds between the loop's liveness stamps: a stall is detected at most threshold + TICK after it
starts (20 ms is the budget; the rest is left for the thread's wake-up and the GIL)."""
SAMPLE_INTERVAL = 0.02
"""Seconds between two samples of the stalled loop's stack, for the first 0.2 s of a stall."""
MAX_SAMPLE_INTERVAL = 0.1
MAX_FRAMES = 5  # application frames a log record lists, innermost first

_MIDDLEWARE_CODE = InstrumentationMiddleware.__call__.__code__
_REQUEST_ID_CODE = RequestIdMiddleware.__call__.__code__


# -- the lag histogram's observation of a stall in progress ----------------------------------------


class _Observation:
    __slots__ = ("loop", "taken", "value")

    def __init__(self, loop: object, value: float) -> None:
        self.loop = loop
        self.value = value  # what it has added to the sum so far
        self.taken = False


class ProvisionalLag:
    """Observations the watchdog wrote into the lag histogram for stalls still going on.

    The watchdog adds one when it detects a stall, through the histogram's own bucket and sum values
    (shared memory in multiprocess mode: a worker killed in the stall leaves it in its file). Until
    its length is known it sits in the +Inf bucket, and the sum grows with the stall: a histogram's
    cumulative counts and its sum must never go down (Prometheus would read a counter reset), and
    moving an observation from a lower bucket to a higher one would lower the counts in between,
    where moving it out of +Inf only raises them. The runtime sampler, the next time it runs on that
    loop, hands over the lag it measured (:meth:`take`): the observation moves to that lag's bucket
    and stands for the sampler's own, so the stall is observed once. A worker killed in a stall
    leaves it in +Inf, its length so far in the sum.
    """

    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self._bounds: list[float] = list(histogram._upper_bounds)
        self._inf = len(self._bounds) - 1  # the +Inf bucket
        self._lock = threading.Lock()
        self._held: list[_Observation] = []
        self.pending = False  # read without the lock by the sampler on every tick

    def observe(self, loop: object, value: float) -> _Observation:
        observation = _Observation(loop, value)
        with self._lock:
            self._histogram._buckets[self._inf].inc(1.0)
            self._histogram._sum.inc(value)
            self._held.append(observation)
            self.pending = True
        return observation

    def move(self, observation: _Observation, value: float) -> None:
        """The stall of ``observation`` lasts ``value`` so far: the sum grows (never shrinks);
        nothing once the sampler has taken it."""
        with self._lock:
            if observation.taken or value <= observation.value:
                return
            self._histogram._sum.inc(value - observation.value)
            observation.value = value

    def take(self, loop: object, lag: float) -> int:
        """The sampler measured ``lag`` on ``loop``: the first observation of that loop's stalls
        becomes one of ``lag`` (moved out of +Inf into its bucket; the sum only grows), any others
        one of their own length. How many there were: when any, the sampler observes nothing more."""
        with self._lock:
            kept = []
            taken = 0
            for observation in self._held:
                if observation.loop is not loop:
                    kept.append(observation)
                    continue
                value = lag if taken == 0 else observation.value
                index = bisect_left(self._bounds, value)
                if index != self._inf:
                    self._histogram._buckets[index].inc(1.0)
                    self._histogram._buckets[self._inf].inc(-1.0)
                if value > observation.value:
                    self._histogram._sum.inc(value - observation.value)
                observation.taken = True
                taken += 1
            self._held = kept
            self.pending = bool(kept)
        return taken


# -- what one look at the stack found ---------------------------------------------------------------


@dataclass(slots=True)
class _Sample:
    task: object
    scope: Any  # the request's ASGI scope, or None outside any request
    middleware: Any
    request_id_frame: types.FrameType | None
    place: str | None
    call: str | None
    frames: tuple[str, ...]


@dataclass(slots=True)
class _Place:
    count: int
    frames: tuple[str, ...]
    calls: dict[str | None, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stall:
    """One stall, as it was logged: who held the loop, where, and for how long."""

    route: str
    method: str | None
    place: str | None  # ``file:line in function`` of application code, None if none was on the stack
    call: str | None  # the function that place was calling, if it was in a call
    frames: tuple[str, ...]  # application frames, innermost first
    request_id: str | None
    started: float  # time.monotonic() when the loop stopped running (see above: estimated)
    detected: float  # time.monotonic() when it was counted
    seconds: float
    samples: int


class _Segment:
    """The part of a stall during which one request (or task) held the loop."""

    __slots__ = (
        "admitted",
        "blocked",
        "counted",
        "method",
        "middleware",
        "places",
        "request_id",
        "route",
        "samples",
        "scope",
        "start",
        "task",
    )

    def __init__(self, sample: _Sample, start: float, route: str, method: str | None) -> None:
        self.task = sample.task
        self.scope = sample.scope
        self.middleware = sample.middleware
        self.start = start
        self.blocked = 0.0  # seconds not added to the counter yet
        self.route = route
        self.method = method
        self.request_id: str | None = None
        self.counted: float | None = None  # when it was counted as a stall
        self.admitted: bool | None = None  # whether its record is logged (None: not decided yet)
        self.places: dict[str | None, _Place] = {}
        self.samples = 0

    def holds(self, sample: _Sample) -> bool:
        return sample.scope is self.scope and sample.task is self.task

    def add(self, sample: _Sample) -> None:
        self.samples += 1
        place = self.places.get(sample.place)
        if place is None:
            place = self.places[sample.place] = _Place(0, sample.frames)
        place.count += 1
        place.calls[sample.call] = place.calls.get(sample.call, 0) + 1

    def where(self) -> tuple[str | None, str | None, tuple[str, ...]]:
        """The most frequent place (the first seen on a tie), its most frequent call, its frames."""
        if not self.places:
            return None, None, ()
        place, found = max(self.places.items(), key=lambda item: item[1].count)
        call = max(found.calls.items(), key=lambda item: item[1])[0]
        return place, call, found.frames


@dataclass(slots=True)
class _Window:
    until: float
    count: int = 0
    seconds: float = 0.0
    longest: float = 0.0
    last: Stall | None = None


class _Sink:
    """The metrics of one registry a watchdog writes to, and how many instrumentations asked."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.users = 1
        self.stalls = metrics.loop_stalls
        self.blocked = metrics.loop_blocked
        self.stalled = metrics.loop_stalled
        self.provisional: ProvisionalLag = metrics.lag_provisional
        self.observation: _Observation | None = None


# -- a dead man's switch -----------------------------------------------------------------------------


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC, _TFD_NONBLOCK, _TFD_CLOEXEC = 1, 0o4000, 0o2000000


class _Alarm:
    """A Linux timerfd that the loop's tick keeps pushing back: it fires only when the loop has not
    ticked for ``after`` seconds. The watchdog's thread waits on it without waking while the loop
    runs, instead of waking every threshold to look (which costs a GIL hand-over each time on a
    busy loop). The tick pays one ``timerfd_settime`` call."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = int(self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
        if self.fd < 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
        self._settime = self._libc.timerfd_settime
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        self._poll = select.poll()  # not select(): a process may have more than 1024 files open
        self._poll.register(self.fd, select.POLLIN)

    @classmethod
    def make(cls) -> _Alarm | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            return cls()
        except (OSError, AttributeError):  # no timerfd (a libc without it, a sandbox refusing it)
            return None

    def set_after(self, seconds: float) -> None:
        """What :meth:`arm` sets the alarm to; call before the thread waits on it."""
        whole = int(seconds)
        self._spec.it_value.tv_sec = whole
        self._spec.it_value.tv_nsec = max(1, int((seconds - whole) * 1e9))

    def arm(self) -> None:
        self._settime(self.fd, 0, self._spec_ref, None)

    def disarm(self) -> None:
        """Never fire, until armed again."""
        self._settime(self.fd, 0, ctypes.byref(_Itimerspec()), None)

    def wait(self, timeout: float | None) -> None:
        """Until the alarm fires, or ``timeout`` seconds."""
        with contextlib.suppress(InterruptedError):
            self._poll.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self.fd, 8)

    def ring(self) -> None:
        """Fire now (the thread waiting on it wakes)."""
        self.set_after(0)
        self.arm()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


# -- the watchdog -----------------------------------------------------------------------------------


class StallWatchdog:
    """Watches one event loop from a daemon thread; see the module's documentation.

    Made and shared by :func:`watch` (one per loop, however many apps are instrumented on it);
    ``log_interval`` (seconds between the summary records of one route and place) and
    ``ongoing_after`` (seconds after which a stall still going on is logged once already) may be
    changed on the instance.
    """

    tick = TICK
    sample_interval = SAMPLE_INTERVAL
    log_interval = 60.0
    ongoing_after = 1.0

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold: float) -> None:
        self.loop = loop
        self.threshold = threshold
        self.thread_id = 0
        self.thread: threading.Thread | None = None
        self.recent: deque[Stall] = deque(maxlen=100)
        """The latest stalls, as they were logged (counted ones only)."""
        self.stalls = 0  # counted since the start
        self.stalled_since: float | None = None
        """``time.monotonic()`` when the stall going on began (estimated), ``None`` while the loop runs."""
        self._thresholds: list[tuple[Metrics, float]] = []
        self._sinks: tuple[_Sink, ...] = ()
        self._ran = time.monotonic()
        self._resumed = (0.0, 0.0)  # (the stamp the loop resumed after, when it resumed)
        self._handle: asyncio.TimerHandle | None = None
        self._alarm: _Alarm | None = None
        # asyncio's own loop waits for events in its selector's select(): while it does, it cannot be
        # stalled, and the tick sleeps rather than wake it 100 times a second (see _tick). Other loops
        # (uvloop waits in C) tick all the time.
        selector = getattr(loop, "_selector", None)
        self._selector = selector if callable(getattr(selector, "select", None)) else None
        self._asleep = False  # the tick sleeps until select() returns
        self._hook = self._woken  # one bound method, told apart from whatever else is there
        self._select: Any = None  # the select() the hook stands in front of
        self._shadowed: Any = None  # a select() set on the selector object itself, put back after
        # Held while the watchdog runs; its thread sleeps by waiting for it (one timed wait: cheaper
        # than an Event's, which this thread does ten times a second), stop() releases it.
        self._running = threading.Lock()
        self._stopping = False
        self._cwd = os.path.join(os.path.realpath(os.getcwd()), "")
        self._kinds: dict[str, tuple[int, str]] = {}
        self._calls: dict[tuple[types.CodeType, int], str | None] = {}
        self._windows: dict[tuple[str | None, str, str | None], _Window] = {}
        self._next_summary = math.inf

    # -- on the loop's thread

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and not self._stopping

    def add(self, metrics: Metrics, threshold: float) -> None:
        """Write stalls to ``metrics`` too (once per registry however often it is added)."""
        self._thresholds.append((metrics, threshold))
        self._set_threshold(min(t for _, t in self._thresholds))
        for sink in self._sinks:
            if sink.metrics is metrics:
                sink.users += 1
                return
        self._sinks = (*self._sinks, _Sink(metrics))

    def remove(self, metrics: Metrics) -> int:
        """Undo one :meth:`add`; how many are left."""
        for index, (added, _) in enumerate(self._thresholds):
            if added is metrics:
                del self._thresholds[index]
                break
        if self._thresholds:
            self._set_threshold(min(t for _, t in self._thresholds))
        sinks = []
        for sink in self._sinks:
            if sink.metrics is metrics:
                sink.users -= 1
                if sink.users == 0:
                    sink.stalled.set(0)
                    continue
            sinks.append(sink)
        self._sinks = tuple(sinks)
        return len(self._thresholds)

    def _set_threshold(self, threshold: float) -> None:
        self.threshold = threshold
        if self._alarm is not None:
            self._alarm.set_after(self.tick + threshold)

    def start(self) -> None:
        """Start ticking on the running loop (call it there) and start the thread."""
        self.thread_id = threading.get_ident()
        self._running.acquire()
        self._alarm = _Alarm.make()
        self._set_threshold(self.threshold)
        self._ran = time.monotonic()
        if self._alarm is not None:
            self._alarm.arm()
        self._handle = self.loop.call_later(self.tick, self._tick)
        self.thread = threading.Thread(target=self._run, name="asyncproof-stall-watchdog", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stopping = True
        with contextlib.suppress(RuntimeError):  # released already
            self._running.release()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._unhook()
        if self._alarm is not None:
            self._alarm.ring()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        if self._alarm is not None and not (self.thread and self.thread.is_alive()):
            self._alarm.close()
        for sink in self._sinks:
            sink.stalled.set(0)
        self._summarize(math.inf)  # the stalls counted but not logged yet

    def _sleep(self, seconds: float) -> None:
        if self._running.acquire(timeout=max(0.0, seconds)):
            self._running.release()  # stopping: let the thread see it at once

    def _tick(self) -> None:
        if self._stopping:
            return
        now = time.monotonic()
        if now - self._ran > self.tick + self.threshold / 2:
            self._resumed = (self._ran, now)  # when a stall ended, for the thread to read
        self._ran = now
        if self._selector is not None and not self.loop._ready:  # type: ignore[attr-defined]
            # Nothing else is ready to run: the loop waits for events once this tick returns, so
            # it cannot stall before select() returns. The tick sleeps until then; the hook in front
            # of select() wakes it (and arms the alarm) before any callback runs.
            self._asleep = True
            self._handle = None
            if self._alarm is not None:
                self._alarm.disarm()
            self._select = self._selector.select
            self._shadowed = vars(self._selector).get("select")
            self._selector.select = self._hook
            return
        if self._alarm is not None:
            self._alarm.arm()  # pushed back: it fires only if the loop misses ticks for the threshold
        self._handle = self.loop.call_later(self.tick, self._tick)

    def _woken(self, timeout: float | None = None) -> Any:
        """In front of the selector's select() while the tick sleeps: once it returns, before any
        callback runs, the loop is awake and ticking again (once per sleep: the hook goes away)."""
        try:
            return self._select(timeout)
        finally:
            self._unhook()
            if not self._stopping:
                self._ran = time.monotonic()
                if self._alarm is not None:
                    self._alarm.arm()
                self._asleep = False  # after _ran: the thread must not see an old stamp as a stall
                self._handle = self.loop.call_later(self.tick, self._tick)

    def _unhook(self) -> None:
        selector = self._selector
        if selector is not None and vars(selector).get("select") is self._hook:
            if self._shadowed is None:
                del selector.select  # the class's own select() again
            else:
                selector.select = self._shadowed  # what someone else had put there

    # -- on the watchdog's thread

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._watch()
            except Exception:  # keep watching: a fault of ours must not end the watchdog
                log.exception("asyncproof's stall watchdog failed; it goes on")
                self._sleep(1.0)

    def _watch(self) -> None:
        now = time.monotonic()
        if now >= self._next_summary:
            self._summarize(now)
        # _asleep first: the loop sets _ran before it clears _asleep on waking (a stamp read before
        # the wake with _asleep read after it would look like a stall since the stamp)
        asleep = self._asleep
        ran = self._ran
        overdue = 0.0 if asleep else now - ran - self.tick
        if overdue < self.threshold:
            # Asleep until the tick is overdue by the threshold (a summary may be due before); while
            # the loop waits for events (its tick asleep too) the alarm is off until it wakes.
            summary = self._next_summary - now
            if self._alarm is not None and overdue <= 0:  # the loop ticks: it keeps the alarm off
                self._alarm.wait(None if summary == math.inf else summary)
            else:  # a tick late already may be the last to arm the alarm: look again in time
                self._sleep(min(self.threshold - overdue, summary))
            return
        if self.loop.is_closed() or not self.loop.is_running():
            self._sleep(self.threshold)  # not a stall: nothing runs the loop
            return
        self._follow(ran)

    def _follow(self, ran: float) -> None:
        """Sample the stalled loop until it runs its tick again."""
        due = ran + self.tick
        # The loop was free at `ran` and stuck from some time before `due` on: taken to be halfway
        # (off by at most half a tick either way; `due` would undercount every stall by that much).
        began = ran + self.tick / 2
        self.stalled_since = began
        try:
            self._sample_stall(ran, due, began)
        finally:
            self.stalled_since = None

    def _sample_stall(self, ran: float, due: float, began: float) -> None:
        segment: _Segment | None = None
        sinks = self._sinks
        observed = False
        before = began  # the time of the previous sample
        while not self._stopping:
            frame = sys._current_frames().get(self.thread_id)
            now = time.monotonic()
            if self._ran != ran:
                break
            if frame is None:  # the loop's thread is gone
                self._stopping = True
                break
            if segment is None and _idle(frame):
                # The loop waits for events and runs the tick next (the process was suspended, or
                # starved of CPU): no stall.
                self._sleep(self.sample_interval)
                return
            sample = self._sample(frame)
            del frame
            if segment is None or not segment.holds(sample):
                start = began if segment is None else (before + now) / 2
                if segment is not None:
                    self._account(segment, before, start, sinks)
                    self._close(segment, start, sinks)
                    before = start
                segment = self._open(sample, start)
            segment.add(sample)
            if segment.counted is None and segment.route == UNMATCHED_ROUTE:
                # It may have been caught before its router ran: the label it would be recorded with
                # is the one it has when the stall counts.
                segment.route = _route(segment.middleware, segment.scope)
            self._account(segment, before, now, sinks)
            if segment.counted is None and now - segment.start >= self.threshold:
                self._count(segment, now, sinks)
            if (
                segment.counted is not None
                and segment.admitted is None
                and now - segment.start >= self.ongoing_after
            ):
                self._log_ongoing(segment, now)
            lag = now - due
            for sink in sinks:
                sink.stalled.set(lag)
                if not observed:
                    sink.observation = sink.provisional.observe(self.loop, lag)
                elif sink.observation is not None:
                    sink.provisional.move(sink.observation, lag)
            observed = True
            before = now
            # A long stall is sampled less often (a tenth of its length so far, 0.1 s at most): its
            # place is as clear from fewer samples, and a 30 s stall costs 300 samples, not 1,500.
            self._sleep(max(self.sample_interval, min(MAX_SAMPLE_INTERVAL, (now - began) / 10)))
        resumed_after, resumed = self._resumed
        end = max(before, resumed if resumed_after == ran else before)
        for sink in sinks:
            sink.stalled.set(0)
            if sink.observation is not None:
                sink.provisional.move(sink.observation, end - due)
                sink.observation = None
        if segment is not None:
            self._account(segment, before, end, sinks)
            if segment.counted is None and end - segment.start >= self.threshold:
                self._count(segment, end, sinks)
            self._close(segment, end, sinks)

    def _sample(self, top: types.FrameType) -> _Sample:
        middleware_frame = request_id_frame = app_frame = callee = None
        frames: list[str] = []
        inner = None
        # The whole chain first, in one go: what follows may let the loop's thread run (classifying a
        # file name reads the file system), and on CPython 3.11 a running coroutine's f_back read
        # after that can come back None, cutting the chain below the endpoint (no request found).
        chain: list[types.FrameType] = []
        link: types.FrameType | None = top
        while link is not None:
            chain.append(link)
            link = link.f_back
        for frame in chain:
            code = frame.f_code
            if code is _MIDDLEWARE_CODE:
                if middleware_frame is None:
                    middleware_frame = frame
            elif code is _REQUEST_ID_CODE:
                if middleware_frame is not None and request_id_frame is None:
                    request_id_frame = frame
            elif len(frames) < MAX_FRAMES:
                kind, shown = self._kind(code.co_filename, frame)
                if kind == APP:
                    if app_frame is None:
                        app_frame, callee = frame, inner
                    frames.append(f"{shown}:{frame.f_lineno} in {code.co_name}")
            inner = frame
        scope = middleware = None
        if middleware_frame is not None:
            found = middleware_frame.f_locals
            scope, middleware = found.get("scope"), found.get("self")
        if app_frame is None:
            call: str | None = function_name(top)
        elif callee is not None:
            call = function_name(callee)
        else:
            call = self._call(app_frame)
        try:
            task = asyncio.current_task(self.loop)
        except Exception:  # a loop of another make
            task = None
        return _Sample(
            task, scope, middleware, request_id_frame, frames[0] if frames else None, call, tuple(frames)
        )

    def _kind(self, filename: str, frame: types.FrameType) -> tuple[int, str]:
        kind = self._kinds.get(filename)
        if kind is None:
            kind = classify(filename, frame.f_globals.get("__name__"), self._cwd)
            if len(self._kinds) >= 10_000:  # code generated at run time: keep it bounded
                self._kinds.clear()
            self._kinds[filename] = kind
        return kind

    def _call(self, frame: types.FrameType) -> str | None:
        key = (frame.f_code, frame.f_lasti)
        if key in self._calls:
            return self._calls[key]
        try:
            name = call_at(frame.f_code, frame.f_lasti, frame.f_globals)
        except Exception:  # source that cannot be read or parsed: the place is still named
            name = None
        if len(self._calls) >= 4096:
            self._calls.clear()
        self._calls[key] = name
        return name

    def _open(self, sample: _Sample, start: float) -> _Segment:
        scope = sample.scope
        if not isinstance(scope, dict) or scope.get("type") != "http":
            return _Segment(sample, start, NO_ROUTE, None)
        method = scope.get("method")
        segment = _Segment(sample, start, _route(sample.middleware, scope), _method(method))
        if sample.request_id_frame is not None:
            with contextlib.suppress(Exception):
                value = sample.request_id_frame.f_locals.get("request_id")
                if isinstance(value, bytes | str):
                    segment.request_id = value.decode("ascii") if isinstance(value, bytes) else value
        sample.request_id_frame = None
        return segment

    def _account(self, segment: _Segment, since: float, until: float, sinks: Sequence[_Sink]) -> None:
        # Held back until the segment counts as a stall (its route is final then), added as it goes
        # after that; a part that never counts adds nothing.
        segment.blocked += max(0.0, until - since)
        if segment.counted is not None:
            self._add_blocked(segment, sinks)

    def _add_blocked(self, segment: _Segment, sinks: Sequence[_Sink]) -> None:
        seconds, segment.blocked = segment.blocked, 0.0
        if seconds > 0:
            for sink in sinks:
                sink.blocked.labels(segment.route).inc(seconds)

    def _count(self, segment: _Segment, now: float, sinks: Sequence[_Sink]) -> None:
        segment.counted = now
        self.stalls += 1
        for sink in sinks:
            sink.stalls.labels(segment.route).inc()
        self._add_blocked(segment, sinks)

    def _close(self, segment: _Segment, end: float, sinks: Sequence[_Sink]) -> None:
        segment.task = segment.scope = segment.middleware = None  # nothing kept past the stall
        if segment.counted is None:  # a part shorter than the threshold: no stall of its own
            return
        self._add_blocked(segment, sinks)
        stall = self._stall(segment, end)
        self.recent.append(stall)
        if segment.admitted is None:
            segment.admitted = self._admit(stall)
        if segment.admitted:
            _log(stall, stall.seconds)
        else:
            self._defer(stall)

    def _stall(self, segment: _Segment, end: float) -> Stall:
        place, call, frames = segment.where()
        assert segment.counted is not None
        return Stall(
            route=segment.route,
            method=segment.method,
            place=place,
            call=call,
            frames=frames,
            request_id=segment.request_id,
            started=segment.start,
            detected=segment.counted,
            seconds=end - segment.start,
            samples=segment.samples,
        )

    def _log_ongoing(self, segment: _Segment, now: float) -> None:
        stall = self._stall(segment, now)
        segment.admitted = self._admit(stall)
        if segment.admitted:
            _log(stall, stall.seconds, ongoing=True)

    # -- the log's rate limit: per method, route and place

    def _admit(self, stall: Stall) -> bool:
        """Whether ``stall`` is logged: the first of its method, route and place in an interval."""
        key = (stall.method, stall.route, stall.place)
        if key in self._windows:
            return False
        if len(self._windows) < 1000:  # places are bounded by the code; this is a safety net
            now = time.monotonic()
            self._windows[key] = _Window(until=now + self.log_interval)
            self._next_summary = min(self._next_summary, now + self.log_interval)
        return True

    def _defer(self, stall: Stall) -> None:
        """Count ``stall``, which ended, for its interval's summary record."""
        window = self._windows.get((stall.method, stall.route, stall.place))
        if window is not None:
            window.count += 1
            window.seconds += stall.seconds
            window.longest = max(window.longest, stall.seconds)
            window.last = stall

    def _summarize(self, now: float) -> None:
        next_summary = math.inf
        for key, window in list(self._windows.items()):
            if window.until > now:
                next_summary = min(next_summary, window.until)
            elif not window.count or window.last is None:
                del self._windows[key]  # a quiet interval: the next stall is logged at once
            else:
                _log_summary(window, window.last, self.log_interval)
                self._windows[key] = _Window(until=now + self.log_interval)
                next_summary = min(next_summary, now + self.log_interval)
        self._next_summary = next_summary


def _idle(frame: types.FrameType) -> bool:
    # asyncio's loop waiting in its selector. (uvloop waits in C: nothing to tell from its stack.)
    return frame.f_globals.get("__name__") == "selectors" and frame.f_code.co_name in ("select", "poll")


def _method(method: object) -> str:
    return method if isinstance(method, str) and method in STANDARD_METHODS else OTHER_METHOD


def _route(middleware: Any, scope: dict[str, Any]) -> str:
    """The label the middleware records for the request of ``scope``."""
    try:  # worked out afresh: the loop's thread, stalled, may be anywhere in the middleware
        route = middleware.route_label(scope, remember=False)
    except Exception:  # nothing matched yet, or a route without a template
        return UNMATCHED_ROUTE
    return route if isinstance(route, str) else UNMATCHED_ROUTE


def _fields(stall: Stall, seconds: float) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "http_route": stall.route,
        "http_request_method": stall.method,
        "blocked_seconds": round(seconds, 3),
        "stall_place": stall.place,
        "stall_call": stall.call,
        "stall_frames": list(stall.frames),
    }
    if stall.request_id is not None:
        fields["request_id"] = stall.request_id
    return fields


def _describe(stall: Stall) -> str:
    where = "outside any request" if stall.route == NO_ROUTE else f"in {stall.method} {stall.route}"
    at = f"at {stall.place}" if stall.place else "outside application code"
    return f"{where} {at}" + (f" ({stall.call})" if stall.call else "")


def _log(stall: Stall, seconds: float, *, ongoing: bool = False) -> None:
    fields = _fields(stall, seconds)
    fields["stall_count"] = 1
    fields["stall_ongoing"] = ongoing
    so_far = " so far" if ongoing else ""
    log.warning("event loop blocked %.2f s%s %s", seconds, so_far, _describe(stall), extra=fields)


def _log_summary(window: _Window, last: Stall, interval: float) -> None:
    fields = _fields(last, window.seconds)
    fields["stall_count"] = window.count
    fields["stall_ongoing"] = False
    fields["blocked_seconds_max"] = round(window.longest, 3)
    # The shape of a single stall's record (its duration the total), then how many and the longest.
    log.warning(
        "event loop blocked %.2f s %s over %d more %s in the last %g s (%.2f s the longest)",
        window.seconds,
        _describe(last),
        window.count,
        "stall" if window.count == 1 else "stalls",
        interval,
        window.longest,
        extra=fields,
    )


# -- one watchdog per loop --------------------------------------------------------------------------

_watchdogs: dict[asyncio.AbstractEventLoop, StallWatchdog] = {}
_watchdogs_lock = threading.Lock()


def watch(metrics: Metrics, threshold: float) -> StallWatchdog:
    """The running loop's watchdog, started on the first call, writing stalls to ``metrics`` too.

    Call on the loop's thread (``Instrumentation.start`` does, at lifespan start-up); every call
    needs an :func:`unwatch`. Instrumentations of one loop share its watchdog: one thread, each
    registry counted once, the smallest threshold asked for.
    """
    loop = asyncio.get_running_loop()
    with _watchdogs_lock:
        watchdog = _watchdogs.get(loop)
        if watchdog is None or not watchdog.running:
            watchdog = _watchdogs[loop] = StallWatchdog(loop, threshold)
            watchdog.add(metrics, threshold)
            watchdog.start()
        else:
            watchdog.add(metrics, threshold)
    return watchdog


def unwatch(watchdog: StallWatchdog, metrics: Metrics) -> None:
    """Undo one :func:`watch`; the last one stops the watchdog."""
    with _watchdogs_lock:
        if watchdog.remove(metrics):
            return
        if _watchdogs.get(watchdog.loop) is watchdog:
            del _watchdogs[watchdog.loop]
    watchdog.stop()


# A forked child has none of its parent's threads: its loops need watchdogs of their own.
os.register_at_fork(after_in_child=_watchdogs.clear)
