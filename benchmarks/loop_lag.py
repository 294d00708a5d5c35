"""Event-loop lag of Gunicorn workers while /metrics is scraped once a second, vs not scraped; and a
scrape while every worker's event loop is blocked.

Gunicorn runs 4 Uvicorn workers of an app with 50 routes, twice: scrapes on the app's port (rendered
in the worker that takes the scrape, in its scrape thread), then scrapes on the metrics port
(answered by the deployment's exposition process, outside the workers). A light load (about 50
requests/s over all routes) runs through two phases per server, ``--rounds`` times over: not
scraped, then scraped once a second. Each phase's lag distribution is read from the workers' own
``asyncio_event_loop_lag_seconds`` histogram (the difference between two scrapes, summed over the
rounds), so the percentiles are bucket upper bounds.

Then, the load stopped, every worker's loop is blocked for 4 s (``time.sleep`` in ``async def``, one
request per worker, 0.3 s apart) and a scrape is made 1 s after the last one: how long it takes to
answer, and the ``asyncio_event_loop_lag_max_seconds`` it shows for each worker.

    .venv/bin/python benchmarks/loop_lag.py [--seconds 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from asyncproof.monitoring.exposition_process import serving_pid
from tests.processes import BIN, free_port, running, scrape, wait_for

WORKERS = 4
BLOCK_SECONDS = 4.0
ROOT = Path(__file__).resolve().parent.parent


def lag_buckets(samples: dict) -> dict[float, float]:  # type: ignore[type-arg]
    return {
        float(dict(labels)["le"]): value
        for (name, labels), value in samples.items()
        if name == "asyncio_event_loop_lag_seconds_bucket"
    }


def percentile(before: dict[float, float], after: dict[float, float], q: float) -> tuple[float, float]:
    bounds = sorted(after)
    cumulative = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cumulative[-1]
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= q * total:
            return bound, total
    return float("inf"), total


def get(port: int, path: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        return connection.getresponse().read()
    finally:
        connection.close()


def load(port: int, stop: threading.Event, rate: float) -> None:
    index = 0
    while not stop.is_set():
        get(port, f"/route{index % 50}/{index}")
        index += 1
        time.sleep(1 / rate)


@contextlib.contextmanager
def gunicorn(folder: Path, metrics_port: int | None) -> Iterator[tuple[int, str]]:
    """4 workers of benchmarks/lag_app.py; yields the app's port and the base URL scrapes go to."""
    port = free_port()
    config = folder / "gunicorn.conf.py"
    config.write_text(
        "from asyncproof.monitoring.gunicorn import *\n"
        f'bind = "127.0.0.1:{port}"\nworkers = {WORKERS}\nworker_class = "uvicorn_worker.UvicornWorker"\n'
    )
    metrics_dir = folder / "metrics"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    if metrics_port:
        env["ASYNCPROOF_BENCH_METRICS_PORT"] = str(metrics_port)
    command = [str(BIN / "gunicorn"), "-c", str(config), "benchmarks.lag_app:app"]
    try:
        with running(command, env=env, log=folder / "gunicorn.log", cwd=ROOT) as server:
            wait_for(f"http://127.0.0.1:{port}/health/live", process=server)
            scrapes = f"http://127.0.0.1:{metrics_port or port}"
            wait_for(f"{scrapes}/metrics", process=server)
            yield port, scrapes
    finally:
        # It exits by itself within a second of the master; this is for a run that was interrupted.
        exposition = serving_pid(str(metrics_dir)) if metrics_dir.exists() else None
        if exposition:
            with contextlib.suppress(ProcessLookupError):
                os.kill(exposition, signal.SIGTERM)


def phases(port: int, scrapes: str, seconds: int, rounds: int) -> list[tuple[Any, ...]]:
    """Not scraped, then scraped once a second, ``rounds`` times over (so that drift in the machine's
    load falls on both); each phase's lag buckets summed over its rounds."""
    for index in range(WORKERS * 50 * 2):  # every route on every worker
        get(port, f"/route{index % 50}/{index}")
    stop = threading.Event()
    loader = threading.Thread(target=load, args=(port, stop, 50.0), daemon=True)
    loader.start()
    deltas: dict[bool, dict[float, float]] = {False: {}, True: {}}
    scrape_ms: list[float] = []
    try:
        time.sleep(2)
        for _ in range(rounds):
            for scraped in (False, True):
                start = lag_buckets(scrape(scrapes))
                end_at = time.monotonic() + seconds
                while time.monotonic() < end_at:
                    if scraped:  # fetched, not parsed: Prometheus parses on its own machine
                        began = time.perf_counter()
                        httpx.get(f"{scrapes}/metrics", timeout=10).raise_for_status()
                        scrape_ms.append((time.perf_counter() - began) * 1000)
                    time.sleep(1)
                end = lag_buckets(scrape(scrapes))
                for bound, count in end.items():
                    deltas[scraped][bound] = deltas[scraped].get(bound, 0.0) + count - start.get(bound, 0.0)
    finally:
        stop.set()
        loader.join(timeout=30)
    results = []
    for scraped, phase in ((False, "not scraped"), (True, "scraped 1/s")):
        p50, ticks = percentile({}, deltas[scraped], 0.5)
        p99, _ = percentile({}, deltas[scraped], 0.99)
        p999, _ = percentile({}, deltas[scraped], 0.999)
        late = ticks - deltas[scraped].get(0.005, 0.0)
        results.append((phase, p50, p99, p999, ticks, late, sorted(scrape_ms) if scraped else []))
    return results


def blocked_scrape(port: int, scrapes: str) -> tuple[float | None, dict[str, float], set[str]]:
    """Block every worker's loop, scrape meanwhile: (seconds to answer or None, lag max by pid, the
    pids that were blocked)."""
    blocked: set[str] = set()

    def block() -> None:
        blocked.add(get(port, f"/block?seconds={BLOCK_SECONDS}").decode())

    threads = [threading.Thread(target=block) for _ in range(WORKERS)]
    for thread in threads:  # one at a time: a worker whose loop is stuck accepts no more
        thread.start()
        time.sleep(0.3)
    time.sleep(1.0)
    began = time.perf_counter()
    try:
        response = httpx.get(f"{scrapes}/metrics", timeout=10)
        took: float | None = time.perf_counter() - began
        text = response.text
    except httpx.HTTPError:
        took, text = None, ""
    for thread in threads:
        thread.join(timeout=30)
    lag_max = {
        sample.labels["pid"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "asyncio_event_loop_lag_max_seconds"
    }
    return took, lag_max, blocked


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3, help="not scraped / scraped rounds per server")
    args = parser.parse_args()
    rows = []
    stalls = []
    with tempfile.TemporaryDirectory(prefix="asyncproof-lag-") as folder:
        for name, separate in (("app port (worker)", False), ("exposition process", True)):
            server_folder = Path(folder) / ("exposition" if separate else "app-port")
            server_folder.mkdir()
            with gunicorn(server_folder, free_port() if separate else None) as (port, scrapes):
                rows += [(name, *figures) for figures in phases(port, scrapes, args.seconds, args.rounds)]
                stalls.append((name, *blocked_scrape(port, scrapes)))
    print(f"Gunicorn {WORKERS} workers x 50 routes, ~50 req/s, {args.rounds} x {args.seconds}s per phase")
    header = ("scrapes to", "phase", "ticks", "> 5 ms", "lag p50 <=", "lag p99 <=", "p99.9 <=", "scrape ms")
    print("{:19} {:12} {:>6} {:>7} {:>11} {:>11} {:>10} {:>10}".format(*header))
    for name, phase, p50, p99, p999, ticks, late, scrape_ms in rows:
        median = f"{scrape_ms[len(scrape_ms) // 2]:.1f}" if scrape_ms else "-"
        figures = f"{p50 * 1000:9.1f}ms {p99 * 1000:9.1f}ms {p999 * 1000:8.1f}ms"
        print(f"{name:19} {phase:12} {ticks:6.0f} {late:7.0f} {figures} {median:>10}")
    print("(> 5 ms: ticks that ran more than 5 ms late; scrape ms: median time to fetch a scrape)")
    print()
    print(
        f"every worker's loop blocked for {BLOCK_SECONDS:g} s (one request each, 0.3 s apart), "
        "a scrape 1 s after the last:"
    )
    for name, took, lag_max, blocked in stalls:
        answer = "no answer within 10 s" if took is None else f"answered in {took * 1000:.0f} ms"
        shown = ", ".join(f"{lag_max[pid]:.2f}" if pid in lag_max else "-" for pid in sorted(blocked))
        print(f"  {name:19} {answer}; lag max of the {len(blocked)} blocked workers: {shown} s")


if __name__ == "__main__":
    main()
