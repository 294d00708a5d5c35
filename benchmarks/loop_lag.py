"""Event-loop lag of Gunicorn workers while /metrics is scraped once a second, vs not scraped.

Gunicorn runs 4 Uvicorn workers of an app with 50 routes; a light load (about 50 requests/s over all
routes) runs throughout. Phase one is not scraped, phase two is scraped once a second. Each phase's
lag distribution is read from the workers' own ``asyncio_event_loop_lag_seconds`` histogram (the
difference between two scrapes), so the percentiles are bucket upper bounds.

    .venv/bin/python benchmarks/loop_lag.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.processes import BIN, free_port, scrape, wait_for

WORKERS = 4


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


def load(port: int, stop: threading.Event, rate: float) -> None:
    index = 0
    while not stop.is_set():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", f"/route{index % 50}/{index}")
        connection.getresponse().read()
        connection.close()
        index += 1
        time.sleep(1 / rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="length of each phase")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="asyncproof-lag-")
    port = free_port()
    config = Path(folder) / "gunicorn.conf.py"
    config.write_text(
        "from asyncproof.monitoring.gunicorn import *\n"
        f'bind = "127.0.0.1:{port}"\nworkers = {WORKERS}\nworker_class = "uvicorn_worker.UvicornWorker"\n'
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(Path(folder) / "metrics")}
    command = [str(BIN / "gunicorn"), "-c", str(config), "benchmarks.lag_app:app"]
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen(command, cwd=root, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health/live", process=server)
        for index in range(WORKERS * 50 * 2):  # every route on every worker
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", f"/route{index % 50}/{index}")
            connection.getresponse().read()
            connection.close()
        loader = threading.Thread(target=load, args=(port, stop, 50.0), daemon=True)
        loader.start()
        time.sleep(2)
        results = {}
        for phase, scraped in (("not scraped", False), ("scraped 1/s", True)):
            start = lag_buckets(scrape(url))
            scrape_ms = []
            end_at = time.monotonic() + args.seconds
            while time.monotonic() < end_at:
                if scraped:
                    began = time.perf_counter()
                    scrape(url)
                    scrape_ms.append((time.perf_counter() - began) * 1000)
                time.sleep(1)
            end = lag_buckets(scrape(url))
            p50, ticks = percentile(start, end, 0.5)
            p99, _ = percentile(start, end, 0.99)
            p999, _ = percentile(start, end, 0.999)
            results[phase] = (p50, p99, p999, ticks, sorted(scrape_ms))
        print(f"Gunicorn {WORKERS} workers x 50 routes, ~50 req/s, {args.seconds}s per phase")
        header = ("phase", "ticks", "lag p50 <=", "lag p99 <=", "p99.9 <=", "scrape ms (median)")
        print("{:14} {:>7} {:>11} {:>11} {:>10} {:>19}".format(*header))
        for phase, (p50, p99, p999, ticks, scrape_ms) in results.items():
            median = f"{scrape_ms[len(scrape_ms) // 2]:.1f}" if scrape_ms else "-"
            figures = f"{p50 * 1000:9.1f}ms {p99 * 1000:9.1f}ms {p999 * 1000:8.1f}ms"
            print(f"{phase:14} {ticks:7.0f} {figures} {median:>19}")
    finally:
        stop.set()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
