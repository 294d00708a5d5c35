"""Microseconds each instrumentation adds to a request, measured in-process.

The ASGI app (one JSON route) is called directly — no server, no sockets — bare and instrumented, in
interleaved rounds; the figure per variant is the median over rounds of (variant - bare) for that
round, so machine noise hits every variant alike. Multiprocess mode needs PROMETHEUS_MULTIPROC_DIR
before prometheus_client is imported, so each group of variants runs in its own child process with
its own bare baseline.

    .venv/bin/python benchmarks/overhead.py [--rounds 30] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

GROUPS = {
    "single": ["bare", "asyncproof", "asyncproof-ids", "instrumentator", "starlette-exporter", "middleware"],
    "multiprocess": ["bare", "asyncproof"],
}
LABELS = {
    "asyncproof": "asyncproof, defaults",
    "asyncproof-ids": "asyncproof + request id and Server-Timing",
    "instrumentator": "prometheus-fastapi-instrumentator, defaults",
    "starlette-exporter": "starlette-exporter, defaults",
    "middleware": '@app.middleware("http") + prometheus_client',
}


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

        import monitoring

        options: dict[str, Any] = {}
        if variant == "asyncproof-ids":
            options = {"request_id_header": "X-Request-ID", "server_timing": True}
        instrumentation = monitoring.instrument(app, registry=CollectorRegistry(), **options)
        after_batch = instrumentation.recorder.flush
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
    apps = {variant: build(variant) for variant in variants}
    loop = asyncio.new_event_loop()
    for app, after in apps.values():  # warm up: imports, caches, first-time label children
        loop.run_until_complete(batch(app, 200, after))
    per_round: dict[str, list[float]] = {variant: [] for variant in variants}
    for round_number in range(rounds):
        order = variants[round_number % len(variants) :] + variants[: round_number % len(variants)]
        for variant in order:
            app, after = apps[variant]
            gc.collect()
            per_round[variant].append(loop.run_until_complete(batch(app, requests, after)))
    loop.close()
    return per_round


def summarize(per_round: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    bare = per_round["bare"]
    result = {"bare": {"us_per_request": statistics.median(bare), "added_us": 0.0}}
    for variant, times in per_round.items():
        if variant != "bare":
            result[variant] = {
                "us_per_request": statistics.median(times),
                "added_us": statistics.median(t - b for t, b in zip(times, bare, strict=True)),
            }
    return result


def child(group: str, rounds: int, requests: int) -> None:
    print(json.dumps(summarize(run_group(GROUPS[group], rounds, requests))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant per round")
    parser.add_argument("--group", choices=sorted(GROUPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.group:
        child(args.group, args.rounds, args.requests)
        return
    results: dict[str, dict[str, dict[str, float]]] = {}
    for group in GROUPS:
        env = dict(os.environ)
        with tempfile.TemporaryDirectory(prefix="asyncproof-bench-") as directory:
            if group == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            else:
                env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            command = [sys.executable, __file__, "--group", group, "--rounds", str(args.rounds)]
            command += ["--requests", str(args.requests)]
            output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        results[group] = json.loads(output)
    print(f"in-process overhead, {args.rounds} interleaved rounds x {args.requests} requests, median")
    print(f"{'variant':48} {'us/request':>11} {'added us':>9} {'x bare':>7}")
    for group, summary in results.items():
        bare = summary["bare"]["us_per_request"]
        print(f"-- {group} process (bare FastAPI: {bare:.1f} us/request)")
        for variant, figures in summary.items():
            if variant == "bare":
                continue
            label = LABELS[variant] + (" (multiprocess)" if group == "multiprocess" else "")
            ratio = figures["us_per_request"] / bare
            print(f"{label:48} {figures['us_per_request']:11.1f} {figures['added_us']:9.2f} {ratio:7.3f}")
    if os.environ.get("ASYNCPROOF_BENCH_JSON"):
        with open(os.environ["ASYNCPROOF_BENCH_JSON"], "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
