"""Scrape cost in multiprocess mode, and how it grows as workers die and are replaced.

Real worker processes (forked) write the contract's metrics for 50 routes each into a multiprocess
folder, as Gunicorn workers do. A scrape is timed with asyncproof's collector (dead workers folded
into one archive per metric type) and with prometheus_client's own ``MultiProcessCollector`` over a
folder where dead workers were retired with prometheus_client's ``mark_process_dead`` (their counter
and histogram files stay). Both folders see the same workers; timings are medians of repeated scrapes.

    .venv/bin/python benchmarks/scrape.py [--workers 4] [--routes 50] [--restarts 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

# prometheus_client decides single- or multiprocess mode at import: set the folder first.
ROOT = tempfile.mkdtemp(prefix="asyncproof-scrape-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(ROOT, "current")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"])

from prometheus_client import CollectorRegistry, generate_latest, values  # noqa: E402
from prometheus_client import multiprocess as prom_multiprocess  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from asyncproof.monitoring.metrics import Metrics  # noqa: E402
from asyncproof.monitoring.multiprocess import MultiprocessCollector, mark_process_dead  # noqa: E402

OURS = os.path.join(ROOT, "asyncproof")
THEIRS = os.path.join(ROOT, "prometheus_client")


def run_worker(routes: int) -> int:
    """Fork a worker that serves some requests on every route, writes its files, and exits."""
    pid = os.fork()
    if pid == 0:
        try:
            values.ValueClass = values.MultiProcessValue()
            metrics = Metrics(CollectorRegistry())
            for route in range(routes):
                for status, seconds in (("200", 0.004), ("200", 0.03), ("404", 0.002)):
                    metrics.http_duration.labels("GET", f"/route{route}/{{item_id}}", status).observe(seconds)
            metrics.http_active.labels("GET").set(1)
            metrics.loop_lag.observe(0.0004)
            for gauge in metrics.per_process_gauges.values():
                gauge.set(1.0)
            metrics.threadpool_total.set(40)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


def copy_files(pid: int) -> None:
    """Put the worker's files into both folders, as if both had seen the same worker."""
    source = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in os.listdir(source):
        if name.endswith(f"_{pid}.db"):
            for folder in (OURS, THEIRS):
                shutil.copy(os.path.join(source, name), os.path.join(folder, name))
            os.remove(os.path.join(source, name))


def time_scrape(collector: object, repeats: int) -> float:
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        generate_latest(registry)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--routes", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    os.makedirs(OURS)
    os.makedirs(THEIRS)
    try:
        live = []
        for _ in range(args.workers):
            pid = run_worker(args.routes)
            copy_files(pid)
            live.append(pid)
        ours = MultiprocessCollector(OURS)
        theirs = prom_multiprocess.MultiProcessCollector(None, path=THEIRS)
        print(f"{args.workers} workers x {args.routes} routes; median of {args.repeats} scrapes")
        print(f"{'':28} {'asyncproof':>12} {'prometheus_client':>18} {'files ours/theirs':>18}")

        def report(label: str) -> None:
            ours_ms = time_scrape(ours, args.repeats)
            theirs_ms = time_scrape(theirs, args.repeats)
            files = f"{len(os.listdir(OURS)) - 1}/{len(os.listdir(THEIRS))}"
            print(f"{label:28} {ours_ms:10.1f}ms {theirs_ms:16.1f}ms {files:>18}")

        report("at start")
        step = max(1, args.restarts // 5)
        for restart in range(1, args.restarts + 1):
            # a worker dies (max_requests, a crash) and its replacement serves the same routes
            dead = live.pop(0)
            mark_process_dead(dead, OURS)
            prom_multiprocess.mark_process_dead(dead, THEIRS)
            pid = run_worker(args.routes)
            copy_files(pid)
            live.append(pid)
            if restart % step == 0:
                report(f"after {restart} restarts")
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
