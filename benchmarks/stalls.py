"""What the stall watchdog costs, and how soon it counts a stall (``monitoring/stalls.py``).

One process, one event loop, a FastAPI app instrumented with ``stall_threshold`` (0.1 s), its
lifespan started so the watchdog runs. Printed:

- the watchdog thread's CPU (``pthread_getcpuclockid``: the thread's own clock) as a share of one
  core, while the loop idles and while it is kept busy with short pure-Python callbacks (2 ms, none
  of them a stall), and the loop thread's own CPU idling with and without the watchdog (its 10 ms
  liveness tick runs there);
- detection delay, from the moment a stall starts to the moment it is counted, over ``--stalls``
  stalls started at random moments (``time.sleep`` in a route, then a pure-Python CPU loop in a
  route, which holds the GIL the watchdog needs);
- the watchdog thread's CPU per stall (stack samples, labels, the log record) and per sample;
- Python bytecodes of a request with the watchdog running and without (``stall_threshold=None``):
  the request path is the same; the loop's tick is counted apart (it runs every 10 ms, not per
  request).

    .venv/bin/python benchmarks/stalls.py [--seconds 10] [--stalls 30]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from asyncproof.monitoring.stalls import SAMPLE_INTERVAL, TICK
from benchmarks.overhead import receive, scope, send

THRESHOLD = 0.1
STALL_SECONDS = 0.3
STARTED: list[float] = []  # time.monotonic() as each stall starts


def make_app(stall_threshold: float | None) -> tuple[Any, Any]:
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry

    from asyncproof import monitoring

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, object]:
        return {"item_id": item_id, "name": "widget"}

    @app.get("/sleep")
    async def block() -> dict[str, object]:
        STARTED.append(time.monotonic())
        time.sleep(STALL_SECONDS)  # noqa: ASYNC251
        return {}

    @app.get("/crunch")
    async def crunch() -> dict[str, object]:
        STARTED.append(time.monotonic())
        end = time.perf_counter() + STALL_SECONDS
        total = 0
        while time.perf_counter() < end:
            for number in range(10_000):
                total += number
        return {}

    instrumentation = monitoring.instrument(
        app, registry=CollectorRegistry(), stall_threshold=stall_threshold
    )
    return app, instrumentation


def thread_cpu(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


async def busy(seconds: float) -> int:
    """Short pure-Python callbacks back to back for ``seconds``: a loop at 100 %, never stalled."""
    end = time.monotonic() + seconds
    steps = 0
    while time.monotonic() < end:
        step_end = time.perf_counter() + 0.002
        while time.perf_counter() < step_end:
            steps += 1
        await asyncio.sleep(0)
    return steps


async def cpu_shares(seconds: float) -> dict[str, float]:
    _app, instrumentation = make_app(THRESHOLD)
    await instrumentation.start()
    watchdog = instrumentation.watchdog
    thread = watchdog.thread
    shares: dict[str, float] = {}
    await asyncio.sleep(0.5)
    for phase, run in (("idle", asyncio.sleep), ("busy", busy)):
        cpu, wall = thread_cpu(thread), time.monotonic()
        await run(seconds)
        shares[phase] = (thread_cpu(thread) - cpu) / (time.monotonic() - wall)
    shares["stalls"] = watchdog.stalls
    await instrumentation.stop()
    return shares


async def loop_cpu(seconds: float, stall_threshold: float | None) -> float:
    """The loop thread's own CPU share while it idles (the sampler's ticks, and the watchdog's)."""
    _app, instrumentation = make_app(stall_threshold)
    await instrumentation.start()
    await asyncio.sleep(0.5)
    cpu, wall = time.thread_time(), time.monotonic()
    await asyncio.sleep(seconds)
    share = (time.thread_time() - cpu) / (time.monotonic() - wall)
    await instrumentation.stop()
    return share


async def stalls(count: int, path: str) -> dict[str, list[float]]:
    app, instrumentation = make_app(THRESHOLD)
    await instrumentation.start()
    watchdog = instrumentation.watchdog
    thread = watchdog.thread
    await asyncio.sleep(0.3)
    figures: dict[str, list[float]] = {"delay": [], "cpu": [], "samples": []}
    for _ in range(count):
        # a random moment between two liveness ticks
        await asyncio.sleep(0.1 + random.random() * watchdog.tick)
        seen = len(watchdog.recent)
        cpu = thread_cpu(thread)
        await app(scope(path), receive, send)
        while len(watchdog.recent) == seen or watchdog.stalled_since is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        stall = watchdog.recent[-1]
        figures["delay"].append(stall.detected - STARTED[-1])
        figures["cpu"].append(thread_cpu(thread) - cpu)
        figures["samples"].append(stall.samples)
    await instrumentation.stop()
    return figures


# The event loop's own machinery: where the watchdog's tick costs bytecodes on the loop's thread.
LOOP_FILES = ("asyncio/base_events.py", "asyncio/events.py", "monitoring/stalls.py")


def request_bytecodes(stall_threshold: float | None, requests: int) -> tuple[float, float, int]:
    """Bytecodes per request outside the event loop's machinery; the loop's (ticks included) per
    request; the watchdog's ticks that ran meanwhile."""
    app, instrumentation = make_app(stall_threshold)
    loop = asyncio.new_event_loop()

    async def serve(number: int) -> None:
        for i in range(number):
            await app(scope(f"/items/{i}"), receive, send)

    loop.run_until_complete(instrumentation.start())
    loop.run_until_complete(serve(50))
    instrumentation.recorder.flush()
    counts: Counter[str] = Counter()
    ticks = [0]

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            counts[frame.f_code.co_filename] += 1
        elif event == "call" and frame.f_code.co_name == "_tick":
            ticks[0] += 1
        return tracer

    sys.settrace(tracer)
    try:
        loop.run_until_complete(serve(requests))
    finally:
        sys.settrace(None)
    loop.run_until_complete(instrumentation.stop())
    loop.close()
    loop_code = sum(number for name, number in counts.items() if name.endswith(LOOP_FILES))
    return (sum(counts.values()) - loop_code) / requests, loop_code / requests, ticks[0]


def tick_cost(ticks: int = 5000) -> tuple[float, bool]:
    """CPU seconds of one watchdog tick on the loop's thread (stamp, re-arm the alarm, call_later),
    and whether the timerfd alarm is there."""
    from asyncproof.monitoring.stalls import StallWatchdog, _Alarm

    loop = asyncio.new_event_loop()
    watchdog = StallWatchdog(loop, THRESHOLD)
    watchdog._alarm = _Alarm.make()
    watchdog._set_threshold(THRESHOLD)
    start = time.thread_time()
    for _ in range(ticks):
        watchdog._tick()
    cost = (time.thread_time() - start) / ticks
    if watchdog._alarm is not None:
        watchdog._alarm.close()
    loop.close()
    return cost, watchdog._alarm is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each CPU phase")
    parser.add_argument("--stalls", type=int, default=30, help="stalls per kind for the detection delay")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    quiet = logging.getLogger("asyncproof.stalls")  # records are made (part of the cost), not printed
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False

    print(
        f"stall threshold {THRESHOLD} s, liveness tick {TICK * 1000:g} ms, "
        f"stack samples every {SAMPLE_INTERVAL * 1000:g} ms"
    )
    shares = asyncio.run(cpu_shares(args.seconds))
    print(f"\nwatchdog thread CPU, share of one core, {args.seconds:g} s each (target <= 0.5 %)")
    print(f"  loop idle   {shares['idle'] * 100:6.3f} %")
    print(f"  loop busy   {shares['busy'] * 100:6.3f} %   (stalls counted: {shares['stalls']:g})")
    with_watchdog = asyncio.run(loop_cpu(args.seconds, THRESHOLD))
    without = asyncio.run(loop_cpu(args.seconds, None))
    every = f"{TICK * 1000:g} ms"
    print(f"loop thread CPU while idle (the runtime sampler, and the watchdog's tick every {every})")
    print(f"  without watchdog {without * 100:6.3f} %   with {with_watchdog * 100:6.3f} %")
    cost, alarm = tick_cost()
    print(
        f"  one tick {cost * 1e6:.1f} us ({'with' if alarm else 'without'} the timerfd alarm): "
        f"{cost / TICK * 100:.3f} % of the loop's thread"
    )

    print(f"\ndetection delay, stall start -> counted, {args.stalls} stalls of {STALL_SECONDS} s each")
    print(f"(target <= threshold + 20 ms = {(THRESHOLD + 0.02) * 1000:.0f} ms)")
    print(f"  {'stall':24} {'median':>8} {'max':>8}   {'CPU/stall':>9} {'samples':>7} {'CPU/sample':>10}")
    for label, path in (("time.sleep in a route", "/sleep"), ("CPU loop in a route", "/crunch")):
        figures = asyncio.run(stalls(args.stalls, path))
        delay, cpu = figures["delay"], figures["cpu"]
        per_sample = sum(cpu) / sum(figures["samples"])
        print(
            f"  {label:24} {statistics.median(delay) * 1000:6.1f}ms {max(delay) * 1000:6.1f}ms"
            f"   {statistics.median(cpu) * 1e3:7.2f}ms {statistics.median(figures['samples']):7.0f}"
            f" {per_sample * 1e6:8.0f}us"
        )

    print(f"\nPython bytecodes per request (/items/{{id}}, {args.requests} requests, traced)")
    print(f"  {'':22} {'request path':>12} {'event loop':>10}   watchdog ticks meanwhile")
    for label, threshold in (("stall_threshold=None", None), ("stall_threshold=0.1", THRESHOLD)):
        path, loop_code, ticks = request_bytecodes(threshold, args.requests)
        print(f"  {label:22} {path:12.0f} {loop_code:10.1f}   {ticks}")
    print("  (event loop: asyncio's base_events.py and events.py, and the tick in stalls.py)")


if __name__ == "__main__":
    main()
