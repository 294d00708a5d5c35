"""Microseconds each instrumentation adds to a request, measured in-process.

The ASGI app (one JSON route) is called directly — no server, no sockets — bare and instrumented, in
interleaved rounds. Each round runs a batch of every variant with a bare batch before and after it
(bare, A, bare, B, bare, ...; the order of the variants rotates from round to round), and a
variant's figure for the round is its time per request minus the mean of the two bare batches around
it, which cancels noise that drifts during the round. The figure per variant is the median over
rounds, with a bootstrap 95 % confidence interval of that median. Multiprocess mode needs
PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported, so each group of variants runs in child
processes with their own bare batches. A process's heap layout moves every figure of that process by a
few tenths of a microsecond (it differs from start to start), so the rounds are split over
``--processes`` children per group, run one after the other, and pooled.

    .venv/bin/python benchmarks/overhead.py [--rounds 120] [--requests 500] [--processes 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

GROUPS = {
    "single": [
        "bare",
        "minimal",
        "asyncproof",
        "asyncproof-ids",
        "instrumentator",
        "starlette-exporter",
        "middleware",
    ],
    "multiprocess": ["bare", "asyncproof"],
}
LABELS = {
    "minimal": "reference: send wrap, 2 clock reads, append",
    "asyncproof": "asyncproof, defaults",
    "asyncproof-ids": "asyncproof + request id and Server-Timing",
    "instrumentator": "prometheus-fastapi-instrumentator, defaults",
    "starlette-exporter": "starlette-exporter, defaults",
    "middleware": '@app.middleware("http") + prometheus_client',
}


class MinimalMiddleware:
    """The least a duration histogram needs, for reference: no labels, no in-flight count, no 499,
    no exclusions, never flushed."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app
        self.durations: list[float] = []

    async def __call__(
        self, scope: dict[str, Any], receive: Any, send: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        finished = 0.0

        def timed_send(message: dict[str, Any]) -> Awaitable[None]:
            nonlocal finished
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished = time.perf_counter()
            return send(message)

        start = time.perf_counter()
        await self.app(scope, receive, timed_send)
        self.durations.append(finished - start)


def build(variant: str) -> tuple[Any, Callable[[], object]]:
    """The app for ``variant`` and a per-batch hook (asyncproof's flush, part of its cost)."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, object]:
        return {"item_id": item_id, "name": "widget"}

    after_batch: Callable[[], object] = lambda: None  # noqa: E731
    if variant in ("asyncproof", "asyncproof-ids"):
        from prometheus_client import CollectorRegistry

        from asyncproof import monitoring

        options: dict[str, Any] = {}
        if variant == "asyncproof-ids":
            options = {"request_id_header": "X-Request-ID", "server_timing": True}
        instrumentation = monitoring.instrument(app, registry=CollectorRegistry(), **options)
        after_batch = instrumentation.recorder.flush
    elif variant == "minimal":
        app.add_middleware(MinimalMiddleware)
    elif variant == "instrumentator":
        from prometheus_client import CollectorRegistry
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator(registry=CollectorRegistry()).instrument(app).expose(app)
    elif variant == "starlette-exporter":
        from starlette_exporter import PrometheusMiddleware, handle_metrics

        app.add_middleware(PrometheusMiddleware)
        app.add_route("/metrics", handle_metrics)
    elif variant == "middleware":
        from prometheus_client import CollectorRegistry, Counter, Histogram

        registry = CollectorRegistry()
        requests = Counter("requests", "Requests.", ["method", "path", "status"], registry=registry)
        latency = Histogram("request_seconds", "Latency.", ["method", "path"], registry=registry)

        @app.middleware("http")
        async def measure(request: Any, call_next: Any) -> Any:
            start = time.perf_counter()
            response = await call_next(request)
            latency.labels(request.method, request.url.path).observe(time.perf_counter() - start)
            requests.labels(request.method, request.url.path, response.status_code).inc()
            return response
    elif variant != "bare":
        raise ValueError(f"unknown variant {variant!r}")
    return app, after_batch


def scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"bench/1.0"),
            (b"accept", b"application/json"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    if message["type"] == "http.response.start" and message["status"] != 200:
        raise RuntimeError(f"benchmark request failed with {message['status']}")


async def batch(app: Callable[..., Awaitable[None]], count: int, after: Callable[[], object]) -> float:
    start = time.perf_counter()
    for i in range(count):
        await app(scope(f"/items/{i}"), receive, send)
    after()
    return (time.perf_counter() - start) / count * 1e6


def run_group(variants: list[str], rounds: int, requests: int) -> dict[str, list[float]]:
    """Per variant, its time per request minus the bare batches' around it, one figure per round;
    under "bare", the bare batches' times per request."""
    apps = {variant: build(variant) for variant in variants}
    loop = asyncio.new_event_loop()

    def timed(variant: str, count: int) -> float:
        app, after = apps[variant]
        gc.collect()  # every batch starts with no garbage from the one before
        return loop.run_until_complete(batch(app, count, after))

    for variant in variants:  # warm up: imports, caches, first-time label children
        timed(variant, 200)
    # The apps and everything imported move to the collector's permanent generation, as in a
    # Gunicorn worker forked after gc.freeze() (asyncproof.monitoring.gunicorn does that): the collection
    # before each batch then walks only what the batches left, instead of flushing the CPU caches
    # with the whole heap.
    gc.collect()
    gc.freeze()
    others = [variant for variant in variants if variant != "bare"]
    added: dict[str, list[float]] = {variant: [] for variant in variants}
    for round_number in range(rounds):
        shift = round_number % len(others)
        before = timed("bare", requests)
        added["bare"].append(before)
        for variant in others[shift:] + others[:shift]:
            cost = timed(variant, requests)
            after = timed("bare", requests)
            added["bare"].append(after)
            added[variant].append(cost - (before + after) / 2)
            before = after
    loop.close()
    return added


def median_with_interval(values: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """The median and a bootstrap 95 % confidence interval of it (seeded: same data, same interval)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return statistics.median(values), medians[int(resamples * 0.025)], medians[int(resamples * 0.975) - 1]


def summarize(added: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    result = {"bare": {"us_per_request": statistics.median(added["bare"])}}
    for variant, figures in added.items():
        if variant != "bare":
            median, low, high = median_with_interval(figures)
            result[variant] = {"added_us": median, "low_us": low, "high_us": high}
    return result


def child(group: str, rounds: int, requests: int) -> None:
    print(json.dumps(run_group(GROUPS[group], rounds, requests)))


def run_children(group: str, rounds: int, requests: int, processes: int) -> dict[str, list[float]]:
    """``rounds`` rounds of ``group`` split over ``processes`` child processes, pooled."""
    pooled: dict[str, list[float]] = {}
    for index in range(processes):
        share = rounds // processes + (index < rounds % processes)
        env = dict(os.environ)
        with tempfile.TemporaryDirectory(prefix="asyncproof-bench-") as directory:
            if group == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            else:
                env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            command = [sys.executable, __file__, "--group", group, "--rounds", str(share)]
            command += ["--requests", str(requests)]
            output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        for variant, figures in json.loads(output).items():
            pooled.setdefault(variant, []).extend(figures)
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=120)
    parser.add_argument("--requests", type=int, default=500, help="requests per batch")
    parser.add_argument("--processes", type=int, default=3, help="child processes per group")
    parser.add_argument("--group", choices=sorted(GROUPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.group:
        child(args.group, args.rounds, args.requests)
        return
    if args.processes < 1 or args.rounds < args.processes:
        parser.error("--processes must be at least 1 and at most --rounds")
    results = {
        group: summarize(run_children(group, args.rounds, args.requests, args.processes)) for group in GROUPS
    }
    print(
        f"in-process overhead, {args.rounds} interleaved rounds in {args.processes} processes per group, "
        f"batches of {args.requests} requests"
    )
    print(f"{'variant':48} {'added us':>9} {'95% interval':>15} {'x bare':>7}")
    for group, summary in results.items():
        bare = summary["bare"]["us_per_request"]
        print(f"-- {group} process (bare FastAPI: {bare:.1f} us/request)")
        for variant, figures in summary.items():
            if variant == "bare":
                continue
            label = LABELS[variant] + (" (multiprocess)" if group == "multiprocess" else "")
            interval = f"{figures['low_us']:.2f} .. {figures['high_us']:.2f}"
            ratio = (bare + figures["added_us"]) / bare
            print(f"{label:48} {figures['added_us']:9.2f} {interval:>15} {ratio:7.3f}")
    if os.environ.get("ASYNCPROOF_BENCH_JSON"):
        with open(os.environ["ASYNCPROOF_BENCH_JSON"], "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
