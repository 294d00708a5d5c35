"""The stall watchdog: what blocked the event loop, by route and line of code, while it happens.

The apps are tests/monitoring/stall_work.py's, whose blocking lines carry markers. Stalls block for
0.3 s against a 0.1 s threshold, so that a busy 2-core machine does not make a test fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import reduce
from pathlib import Path
from typing import Any

import fastapi  # noqa: F401  (stall_work's app is a FastAPI one: not for the Starlette-only compat cell)
import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from asyncproof import monitoring
from asyncproof.monitoring import places, stalls
from asyncproof.monitoring.places import call_at
from asyncproof.monitoring.stalls import ProvisionalLag, Stall, StallWatchdog
from tests.monitoring.helpers import client_for
from tests.monitoring.stall_work import create_app, marked
from tests.processes import BIN, ROOT, free_port, running, wait_for

pytestmark = pytest.mark.anyio

STALLS = "asyncio_event_loop_stalls_total"
BLOCKED = "asyncio_event_loop_blocked_seconds_total"
STALLED = "asyncio_event_loop_stalled_seconds"
LAG = "asyncio_event_loop_lag_seconds"
THREAD_NAME = "asyncproof-stall-watchdog"
# blocked seconds of a 0.3 s stall: it is measured from halfway between two 10 ms ticks
TOLERANCE = 0.05


def at(marker: str, function: str) -> str:
    return f"{marked(marker)} in {function}"


def counted(registry: CollectorRegistry, name: str, route: str) -> float | None:
    return registry.get_sample_value(name, {"http_route": route})


def stall_series(registry: CollectorRegistry) -> dict[str, float]:
    return {
        sample.labels["http_route"]: sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == STALLS
    }


async def settled(watchdog: StallWatchdog | None, count: int) -> list[Stall]:
    """The watchdog's stalls once it has seen ``count`` of them and none is going on."""
    assert watchdog is not None
    for _ in range(300):
        if watchdog.stalled_since is None and len(watchdog.recent) >= count:
            return list(watchdog.recent)
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} stalls, the watchdog saw {list(watchdog.recent)}")


def watchdog_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD_NAME]


@pytest.fixture(scope="module")
def hash_iterations() -> int:
    """pbkdf2_hmac iterations that take about 0.3 s on this machine."""
    start = time.perf_counter()
    hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 20_000)
    return max(20_000, int(20_000 * 0.3 / (time.perf_counter() - start)))


# -- route, place and call --------------------------------------------------------------------------

CASES = [
    # request, route, place, call
    ("/sleep?seconds=0.3", "/sleep", at("sleep", "sleep"), "time.sleep"),
    ("/crunch?seconds=0.3", "/crunch", at("crunch", "crunch"), None),
    ("/hash?iterations={iterations}", "/hash", at("hash", "hash_"), "hashlib.pbkdf2_hmac"),
    ("/reports/7?seconds=0.3", "/reports/{report_id}", at("report", "report"), "time.sleep"),
    # a BackgroundTask runs inside its request's middleware frame: its route
    ("/background?seconds=0.3", "/background", at("job", "blocking_job"), "time.sleep"),
    # a task the app spawned runs in no request
    ("/spawn?seconds=0.3", "none", at("job", "blocking_job"), "time.sleep"),
]


@pytest.mark.parametrize(("request_path", "route", "place", "call"), CASES, ids=[c[1] for c in CASES])
async def test_a_stall_is_counted_for_the_route_whose_code_blocked_with_its_line_and_call(
    request_path: str, route: str, place: str, call: str | None, hash_iterations: int
) -> None:
    app, instrumentation = create_app(registry=CollectorRegistry())
    registry = instrumentation.registry
    async with client_for(app) as client:
        for _ in range(3):
            assert (await client.get("/fast")).status_code == 200
        response = await client.get(request_path.format(iterations=hash_iterations))
        assert response.status_code == 200
        (stall,) = await settled(instrumentation.watchdog, 1)
        for _ in range(3):
            await client.get("/fast")
    assert (stall.route, stall.place, stall.call) == (route, place, call)
    assert stall.method == (None if route == "none" else "GET")
    assert stall.frames[0] == place
    assert stall_series(registry) == {route: 1}  # the route that never blocks has no stall
    assert counted(registry, BLOCKED, route) == pytest.approx(stall.seconds)
    if "seconds=0.3" in request_path:
        assert stall.seconds == pytest.approx(0.3, abs=TOLERANCE)
    assert registry.get_sample_value(STALLED) == 0


async def test_the_frames_of_a_stall_are_the_application_frames_innermost_first() -> None:
    app, instrumentation = create_app(registry=CollectorRegistry())
    async with client_for(app) as client:
        await client.get("/crunch?seconds=0.3")
        (stall,) = await settled(instrumentation.watchdog, 1)
    assert stall.frames[0] == at("crunch", "crunch")
    assert re.fullmatch(r"tests/monitoring/stall_work\.py:\d+ in cpu", stall.frames[1])
    assert not any("asyncproof" in frame or "site-packages" in frame for frame in stall.frames)


async def test_requests_that_block_back_to_back_in_one_stall_are_counted_once_each() -> None:
    # Both requests' first steps are ready in the same pass of the loop: the tick runs after both,
    # so the loop is stuck for 0.6 s in one go, split where the running request changes.
    app, instrumentation = create_app(registry=CollectorRegistry())
    registry = instrumentation.registry
    async with client_for(app) as client:
        await asyncio.gather(client.get("/sleep?seconds=0.3"), client.get("/reports/1?seconds=0.3"))
        found = await settled(instrumentation.watchdog, 2)
    assert sorted(stall.route for stall in found) == ["/reports/{report_id}", "/sleep"]
    assert stall_series(registry) == {"/reports/{report_id}": 1, "/sleep": 1}
    for route in ("/sleep", "/reports/{report_id}"):
        assert counted(registry, BLOCKED, route) == pytest.approx(0.3, abs=TOLERANCE)


async def test_a_request_caught_before_its_router_ran_is_counted_for_the_route_it_reaches() -> None:
    # The second request's part of the stall is first seen in a middleware, before routing; it
    # counts for the route it then reaches, as the middleware will record it.
    app, instrumentation = create_app(registry=CollectorRegistry())
    registry = instrumentation.registry
    async with client_for(app) as client:
        await asyncio.gather(
            client.get("/sleep?seconds=0.3"),
            client.get("/reports/1?seconds=0.3", headers={"x-slow-start": "1"}),
        )
        found = await settled(instrumentation.watchdog, 2)
    assert stall_series(registry) == {"/reports/{report_id}": 1, "/sleep": 1}
    assert counted(registry, BLOCKED, "/reports/{report_id}") == pytest.approx(0.35, abs=TOLERANCE)
    assert [stall.place for stall in found] == [at("sleep", "sleep"), at("report", "report")]


async def test_without_the_timerfd_alarm_the_thread_looks_once_per_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stalls._Alarm, "make", classmethod(lambda cls: None))
    app, instrumentation = create_app(registry=CollectorRegistry())
    async with client_for(app) as client:
        assert instrumentation.watchdog is not None
        assert instrumentation.watchdog._alarm is None
        await client.get("/sleep?seconds=0.3")
        (stall,) = await settled(instrumentation.watchdog, 1)
    assert (stall.route, stall.place) == ("/sleep", at("sleep", "sleep"))
    assert stall.detected - stall.started < 0.1 + 0.2


async def test_an_idle_loop_is_not_woken_by_the_tick_and_a_stall_as_it_wakes_is_caught_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticks: list[float] = []
    tick = StallWatchdog._tick

    def counting(watchdog: StallWatchdog) -> None:
        ticks.append(time.monotonic())
        tick(watchdog)

    monkeypatch.setattr(StallWatchdog, "_tick", counting)
    app, instrumentation = create_app(registry=CollectorRegistry())
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    async with client_for(app) as client:
        watchdog = instrumentation.watchdog
        assert watchdog is not None
        await asyncio.sleep(0.2)
        ticks.clear()
        await asyncio.sleep(1.0)  # idle, but for the runtime sampler's ten wake-ups a second
        idle_ticks = len(ticks)
        # the loop wakes for this request and blocks at once: caught as if it had been ticking
        await client.get("/sleep?seconds=0.3")
        (stall,) = await settled(watchdog, 1)
    assert idle_ticks < 40, idle_ticks  # a tick every 10 ms would be 100
    assert stall.route == "/sleep"
    assert stall.detected - stall.started <= 0.1 + 0.03
    assert stall.seconds == pytest.approx(0.3, abs=TOLERANCE)
    assert "select" not in vars(selector)  # the hook in front of select() is gone with the watchdog


async def test_a_short_block_is_no_stall() -> None:
    app, instrumentation = create_app(registry=CollectorRegistry(), stall_threshold=0.5)
    async with client_for(app) as client:
        await client.get("/sleep?seconds=0.1")
        await asyncio.sleep(0.2)
    assert stall_series(instrumentation.registry) == {}
    assert instrumentation.watchdog is None  # stopped with the app


# -- while the stall lasts --------------------------------------------------------------------------


class Poller:
    """Reads the registry from a thread every 10 ms while the loop is blocked."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read
        self.seen: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.seen.append((time.monotonic(), self.read()))

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def test_a_stall_is_counted_shown_and_in_the_lag_histogram_while_it_lasts() -> None:
    registry = CollectorRegistry()
    app, instrumentation = create_app(registry=registry, loop_lag_interval=0.05)
    # What the runtime sampler observes itself; the rest of the histogram is the watchdog's.
    histogram: Any = instrumentation.metrics.loop_lag
    sampled: list[float] = []
    observe = histogram.observe
    histogram.observe = lambda value: (sampled.append(value), observe(value))

    def read() -> dict[str, float]:
        return {
            "stalls": counted(registry, STALLS, "/sleep") or 0.0,
            "blocked": counted(registry, BLOCKED, "/sleep") or 0.0,
            "stalled": registry.get_sample_value(STALLED) or 0.0,
            "lag_count": registry.get_sample_value(f"{LAG}_count") or 0.0,
            "lag_sum": registry.get_sample_value(f"{LAG}_sum") or 0.0,
            "sampled": float(len(sampled)),
        }

    async with client_for(app) as client:
        await asyncio.sleep(0.2)
        with Poller(read) as poller:
            sent = time.monotonic()
            await client.get("/sleep?seconds=0.6")
            ended = time.monotonic()
            (stall,) = await settled(instrumentation.watchdog, 1)
            await asyncio.sleep(0.2)  # the sampler's next ticks
    during = [values for t, values in poller.seen if sent < t < ended - 0.05 and values["stalls"]]
    assert during, "the stall was not counted while it lasted"
    # detected once the loop had not run for the threshold, long before the stall ended
    assert stall.detected - sent < 0.1 + 0.25
    assert max(values["stalled"] for values in during) > 0.3
    assert max(values["blocked"] for values in during) > 0.3  # blocked seconds grow during the stall
    # one provisional observation of the stall so far, beside what the sampler observed
    assert all(values["lag_count"] == values["sampled"] + 1 for values in during)
    assert during[-1]["lag_sum"] > sum(sampled[: int(during[-1]["sampled"])]) + 0.3
    # once the loop runs again, the sampler's measurement settles it (its bucket): observed once
    after = read()
    assert after["stalled"] == 0
    assert after["lag_count"] == len(sampled) + 1
    assert after["lag_sum"] - sum(sampled) > 0.45
    bucket = f"{LAG}_bucket"
    assert registry.get_sample_value(bucket, {"le": "+Inf"}) == registry.get_sample_value(
        bucket, {"le": "1.0"}
    )
    assert registry.get_sample_value(bucket, {"le": "0.25"}) == len(sampled)  # the stall is above it
    assert not instrumentation.metrics.lag_provisional.pending
    # and no scrape during it saw a cumulative count or the sum go down
    series = [values for _, values in poller.seen]
    for before, later in itertools.pairwise(series):
        assert later["lag_count"] >= before["lag_count"]
        assert later["lag_sum"] >= before["lag_sum"] - 1e-9


def test_a_provisional_observation_never_lowers_a_count_or_the_sum_and_is_settled_once() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("lag_seconds", "Lag.", registry=registry, buckets=(0.1, 0.5, 1.0))
    provisional = ProvisionalLag(histogram)
    loop, other_loop = object(), object()
    seen: list[tuple[float, ...]] = []

    def snapshot() -> tuple[float, ...]:
        # cumulative counts and the sum: what a scrape at this moment shows
        values = [registry.get_sample_value("lag_seconds_bucket", {"le": le}) or 0.0 for le in LES]
        values.append(registry.get_sample_value("lag_seconds_sum") or 0.0)
        seen.append(tuple(values))
        return seen[-1]

    LES = ("0.1", "0.5", "1.0", "+Inf")
    observation = provisional.observe(loop, 0.3)
    assert snapshot() == pytest.approx((0, 0, 0, 1, 0.3))  # in +Inf while its length is unknown
    provisional.move(observation, 2.0)
    assert snapshot() == pytest.approx((0, 0, 0, 1, 2.0))
    provisional.move(observation, 1.5)  # the sum never shrinks
    assert snapshot() == pytest.approx((0, 0, 0, 1, 2.0))
    other = provisional.observe(other_loop, 0.2)
    assert provisional.take(loop, 0.4) == 1  # the sampler measured 0.4 s: its bucket, its place
    assert snapshot() == pytest.approx((0, 1, 1, 2, 2.2))
    provisional.move(observation, 5.0)  # too late: settled
    provisional.move(other, 0.25)
    assert provisional.pending
    assert provisional.take(other_loop, 0.3) == 1
    assert not provisional.pending
    assert provisional.take(loop, 0.01) == 0  # nothing of that loop left: the sampler observes it
    assert snapshot() == pytest.approx((0, 2, 2, 2, 2.3))
    assert registry.get_sample_value("lag_seconds_count") == 2
    # a scrape at any moment saw every cumulative count and the sum grow or stay, never go down
    for before, after in itertools.pairwise(seen):
        assert all(b <= a + 1e-9 for b, a in zip(before, after, strict=True)), (before, after)


# -- the log ----------------------------------------------------------------------------------------


def stall_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "asyncproof.stalls"]


async def test_each_stall_is_logged_with_method_route_duration_place_and_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, instrumentation = create_app(registry=CollectorRegistry(), request_id_header="X-Request-ID")
    with caplog.at_level(logging.WARNING, logger="asyncproof.stalls"):
        async with client_for(app) as client:
            await client.get("/reports/3?seconds=0.3", headers={"X-Request-ID": "req-stall-1"})
            await settled(instrumentation.watchdog, 1)
    (record,) = stall_records(caplog)
    assert record.levelno == logging.WARNING
    place = at("report", "report")
    pattern = (
        rf"event loop blocked 0\.\d\d s in GET /reports/\{{report_id\}} at {re.escape(place)} \(time\.sleep\)"
    )
    assert re.fullmatch(pattern, record.getMessage()), record.getMessage()
    fields = record.__dict__
    assert fields["http_route"] == "/reports/{report_id}"
    assert fields["http_request_method"] == "GET"
    assert fields["blocked_seconds"] == pytest.approx(0.3, abs=TOLERANCE)
    assert (fields["stall_place"], fields["stall_call"]) == (place, "time.sleep")
    assert fields["stall_frames"][0] == place
    assert fields["request_id"] == "req-stall-1"

    # JsonFormatter writes them, and RequestIdFilter (which runs on the watchdog's thread, outside
    # the request's context) keeps the request's id
    assert monitoring.RequestIdFilter().filter(record)
    document = json.loads(monitoring.JsonFormatter().format(record))
    assert document["request_id"] == "req-stall-1"
    assert document["message"] == record.getMessage()
    for name in ("http_route", "http_request_method", "blocked_seconds", "stall_place", "stall_call"):
        assert document[name] == fields[name]
    assert document["stall_frames"] == fields["stall_frames"]


async def test_a_generated_request_id_is_found_too(caplog: pytest.LogCaptureFixture) -> None:
    app, instrumentation = create_app(registry=CollectorRegistry(), request_id_header="X-Request-ID")
    with caplog.at_level(logging.WARNING, logger="asyncproof.stalls"):
        async with client_for(app) as client:
            response = await client.get("/sleep?seconds=0.3")
            await settled(instrumentation.watchdog, 1)
    (record,) = stall_records(caplog)
    assert record.__dict__["request_id"] == response.headers["x-request-id"]


async def test_the_log_is_rate_limited_per_route_and_place(caplog: pytest.LogCaptureFixture) -> None:
    app, instrumentation = create_app(registry=CollectorRegistry())
    watchdog = None
    with caplog.at_level(logging.WARNING, logger="asyncproof.stalls"):
        async with client_for(app) as client:
            watchdog = instrumentation.watchdog
            assert watchdog is not None
            watchdog.log_interval = 2.0
            for _ in range(3):
                await client.get("/sleep?seconds=0.25")
            await client.get("/crunch?seconds=0.25")  # another place: logged at once
            await settled(watchdog, 4)
            first = [record.getMessage() for record in stall_records(caplog)]
            for _ in range(500):  # the summary, once the interval is over
                if len(stall_records(caplog)) > 2:
                    break
                await asyncio.sleep(0.01)
    assert stall_series(instrumentation.registry) == {"/sleep": 3, "/crunch": 1}
    assert [message.split(" s ", 1)[1] for message in first] == [
        f"in GET /sleep at {at('sleep', 'sleep')} (time.sleep)",
        f"in GET /crunch at {at('crunch', 'crunch')}",
    ]
    summary = stall_records(caplog)[2]
    assert re.fullmatch(
        rf"event loop blocked 0\.\d\d s in GET /sleep at {re.escape(at('sleep', 'sleep'))} \(time\.sleep\) "
        r"over 2 more stalls in the last 2 s \(0\.\d\d s the longest\)",
        summary.getMessage(),
    ), summary.getMessage()
    assert summary.__dict__["stall_count"] == 2
    assert summary.__dict__["blocked_seconds"] == pytest.approx(0.5, abs=2 * TOLERANCE)
    assert len(stall_records(caplog)) == 3


async def test_a_long_stall_is_logged_while_it_lasts_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, instrumentation = create_app(registry=CollectorRegistry())
    assert instrumentation.options.stall_threshold == 0.1
    with caplog.at_level(logging.WARNING, logger="asyncproof.stalls"):
        async with client_for(app) as client:
            assert instrumentation.watchdog is not None
            instrumentation.watchdog.ongoing_after = 0.3
            await client.get("/sleep?seconds=0.7")
            await settled(instrumentation.watchdog, 1)
    ongoing, ended = stall_records(caplog)
    assert re.match(r"event loop blocked 0\.3\d s so far in GET /sleep", ongoing.getMessage())
    assert ongoing.__dict__["stall_ongoing"] is True
    assert re.match(r"event loop blocked 0\.[67]\d s in GET /sleep", ended.getMessage())
    assert ended.__dict__["stall_ongoing"] is False


# -- options and sharing ----------------------------------------------------------------------------


async def test_stall_threshold_none_starts_no_watchdog() -> None:
    before = watchdog_threads()
    app, instrumentation = create_app(registry=CollectorRegistry(), stall_threshold=None)
    async with client_for(app) as client:
        assert instrumentation.watchdog is None
        assert watchdog_threads() == before
        await client.get("/sleep?seconds=0.3")
    assert stall_series(instrumentation.registry) == {}


@pytest.mark.parametrize("threshold", [0, -0.1, float("inf"), float("nan"), "0.1", True])
def test_stall_threshold_must_be_a_positive_number(threshold: object) -> None:
    with pytest.raises(ValueError, match="stall_threshold must be a positive number of seconds"):
        monitoring.Options(stall_threshold=threshold)  # type: ignore[arg-type]


async def test_apps_on_one_loop_share_one_watchdog_and_count_each_stall_once_per_registry() -> None:
    shared, own = CollectorRegistry(), CollectorRegistry()
    first, first_instrumentation = create_app(registry=shared)
    second, second_instrumentation = create_app(registry=shared, stall_threshold=0.2)
    third, third_instrumentation = create_app(registry=own)
    before = watchdog_threads()
    async with client_for(first) as client, client_for(second), client_for(third):
        watchdog = first_instrumentation.watchdog
        assert watchdog is not None
        assert second_instrumentation.watchdog is watchdog is third_instrumentation.watchdog
        assert watchdog.threshold == 0.1  # the smallest asked for
        assert len(watchdog_threads()) == len(before) + 1
        await client.get("/sleep?seconds=0.3")
        await settled(watchdog, 1)
    assert stall_series(shared) == {"/sleep": 1}
    assert stall_series(own) == {"/sleep": 1}
    assert watchdog_threads() == before  # stopped with the last app
    assert not watchdog.running


# -- call names from the source ---------------------------------------------------------------------


def caller_call(probe_call: Callable[[Callable[..., Any]], object]) -> str | None:
    """What ``call_at`` names for the C function the caller is in when ``probe`` runs."""
    found: list[str | None] = []

    def probe(*args: object) -> int:
        frame = sys._getframe(1)
        found.append(call_at(frame.f_code, frame.f_lasti, frame.f_globals))
        return 0

    probe_call(probe)
    return found[0]


def test_the_call_is_named_as_the_source_writes_it_with_modules_resolved() -> None:
    assert caller_call(lambda probe: sorted([1], key=probe)) == "sorted"
    assert caller_call(lambda probe: functools.reduce(probe, [1, 2])) == "functools.reduce"
    # imported by name, from a private module that the public one re-exports
    assert caller_call(lambda probe: reduce(probe, [1, 2])) == "functools.reduce"
    assert (
        caller_call(
            lambda probe: sorted(
                [1],
                key=probe,
            )
        )
        == "sorted"
    )
    assert caller_call(lambda probe: list(map(probe, [1]))) == "list"


PROBE = """
import functools, importlib.util, sys
spec = importlib.util.spec_from_file_location("places", sys.argv[1])
places = importlib.util.module_from_spec(spec)
spec.loader.exec_module(places)
names = []
def probe(*args):
    frame = sys._getframe(1)
    names.append(places.call_at(frame.f_code, frame.f_lasti, frame.f_globals))
    return 0
sorted([1], key=probe)
functools.reduce(probe, [1, 2])
sorted(
    [1],
    key=probe,
)
def suspended():
    yield 1
generator = suspended()
next(generator)
frame = generator.gi_frame  # at a yield: no call
names.append(places.call_at(frame.f_code, frame.f_lasti, frame.f_globals))
print(names)
"""


def test_the_call_is_named_on_every_supported_python(tmp_path: Path) -> None:
    # Instruction offsets and source positions differ between CPython 3.11, 3.12 and 3.13: checked
    # on the interpreters this machine has (places.py needs nothing but the standard library).
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    pythons = [Path(sys.executable), *sorted(root.glob("versions/3.1[123].*/bin/python3"))]
    for python in pythons:
        result = subprocess.run(
            [str(python), str(script), places.__file__], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "['sorted', 'functools.reduce', 'sorted', None]", python


# -- a real server ----------------------------------------------------------------------------------


def get(url: str, timeout: float = 30) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, timeout=timeout)


@pytest.mark.integration
def test_under_uvicorn_each_blocking_request_is_counted_for_its_route_and_logged(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "uvicorn"), "tests.monitoring.stall_work:app", "--host", "127.0.0.1"]
    log = tmp_path / "server.log"
    with running([*command, "--port", str(port)], log=log, cwd=ROOT) as server:
        wait_for(f"{url}/health/live", process=server)
        # concurrent clients: the loop may run two of them back to back in one stall
        paths = ["/sleep?seconds=0.3", "/sleep?seconds=0.3", "/crunch?seconds=0.3", "/fast", "/fast"]
        threads = [threading.Thread(target=get, args=(f"{url}{path}",)) for path in paths]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(0.3)
        text = httpx.get(f"{url}/metrics", timeout=10).text
    samples = {
        (family.name, sample.labels.get("http_route")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in (STALLS, BLOCKED)
    }
    assert samples[("asyncio_event_loop_stalls", "/sleep")] == 2
    assert samples[("asyncio_event_loop_stalls", "/crunch")] == 1
    assert ("asyncio_event_loop_stalls", "/fast") not in samples
    assert samples[("asyncio_event_loop_blocked_seconds", "/sleep")] == pytest.approx(0.6, abs=2 * TOLERANCE)
    output = log.read_text()
    assert f"in GET /sleep at {at('sleep', 'sleep')} (time.sleep)" in output
    assert f"in GET /crunch at {at('crunch', 'crunch')}" in output


@pytest.mark.integration
def test_a_worker_killed_in_a_stall_leaves_the_stall_in_its_metric_files(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "uvicorn"), "tests.monitoring.stall_work:app", "--host", "127.0.0.1"]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder)}

    def files() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(folder))
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in registry.collect()
            for sample in metric.samples
        }

    with running([*command, "--port", str(port)], env=env, log=tmp_path / "server.log", cwd=ROOT) as server:
        wait_for(f"{url}/health/live", process=server)
        # A stall of its own start (a loaded machine) must be over and measured first: the loop runs
        # again (no stall now) and the sampler has observed twice since; otherwise it could still
        # be in +Inf, unmeasured, when the worker is killed, and count as this test's stall.
        pid = str(server.pid)
        first = files().get((f"{LAG}_count", ()), 0.0)
        quiet_by = time.monotonic() + 15
        while time.monotonic() < quiet_by:
            now = files()
            if (
                now.get((f"{LAG}_count", ()), 0.0) >= first + 2
                and now.get((STALLED, (("pid", pid),)), 0.0) == 0
            ):
                break
            time.sleep(0.05)
        before = files()
        lag_before = before.get((f"{LAG}_count", ()), 0.0)
        # lags over 1 s already (a slow start on a loaded machine): the stall's must come on top
        longer_before = lag_before - before.get((f"{LAG}_bucket", (("le", "1.0"),)), 0.0)
        threading.Thread(target=get, args=(f"{url}/sleep?seconds=60", 10), daemon=True).start()
        stalled = 0.0
        deadline = time.monotonic() + 20
        while stalled < 1.0 and time.monotonic() < deadline:
            stalled = files().get((STALLED, (("pid", str(server.pid)),)), 0.0)
            time.sleep(0.01)
        assert stalled >= 1.0, (
            f"the worker's files never showed the stall: {sorted(k for k in files() if 'stall' in k[0])}\n"
            + (tmp_path / "server.log").read_text()[-3000:]
        )
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    samples = files()
    found = {key: value for key, value in samples.items() if "stall" in key[0] or "lag" in key[0]}
    why = f"{found}\n{(tmp_path / 'server.log').read_text()[-2000:]}"
    assert samples.get((STALLS, (("http_route", "/sleep"),))) == 1, why
    assert samples.get((BLOCKED, (("http_route", "/sleep"),)), 0.0) >= 1.0, why
    # the stall so far is in the lag histogram although the sampler never ran again
    assert samples[(f"{LAG}_count", ())] >= lag_before + 1, why
    longer = samples[(f"{LAG}_count", ())] - samples[(f"{LAG}_bucket", (("le", "1.0"),))]
    assert longer - longer_before == 1, why
    assert samples[(f"{LAG}_sum", ())] >= 1.0, why
