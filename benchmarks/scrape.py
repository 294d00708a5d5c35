"""Scrape cost in multiprocess mode: asyncproof against prometheus_client over the same workers' files.

Forked worker processes write their metric files, as Gunicorn workers do, and exit: the request
histogram through a prometheus_client ``Histogram`` made from the contract's
``HTTP_SERVER_REQUEST_DURATION`` (two status series per route), the contract's in-flight, loop-lag
and threadpool metrics and every per-process gauge. Each worker's files are linked into two folders.
A scrape is timed end to end on each: asyncproof's ``Exposition.render`` (the incremental merge of
``monitoring.multiprocess`` and the cached lines of ``monitoring.render``) and prometheus_client's
``MultiProcessCollector`` with ``generate_latest``. Figures are medians of repeated scrapes after a
first one (a long-lived exposition keeps its caches from one scrape to the next; the first, cold,
scrape is shown apart), with the breakdown of asyncproof's time into reading the files (list, map,
parse new entries), merging them into families, and rendering.

With ``--restarts N``, workers then die one at a time and are replaced (their files retired with
asyncproof's ``mark_process_dead``, which folds them into one archive per type, and with
prometheus_client's, which leaves them), and the scrape is timed again every N/5 restarts.
``--theirs-up-to`` skips timing prometheus_client where its folder holds more than that many
workers x routes (it takes seconds a scrape there); asyncproof's figures are still shown.

    .venv/bin/python benchmarks/scrape.py                    # 2/4/8/16 workers x 50/200/500 routes
    .venv/bin/python benchmarks/scrape.py --workers 8 --routes 200 --restarts 100
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

# prometheus_client decides single- or multiprocess mode at import: set the folder first.
ROOT = tempfile.mkdtemp(prefix="asyncproof-scrape-")
WRITTEN = os.path.join(ROOT, "written")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = WRITTEN
os.makedirs(WRITTEN)

from prometheus_client import CollectorRegistry, Histogram, generate_latest, values  # noqa: E402
from prometheus_client import multiprocess as prom_multiprocess  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from asyncproof.monitoring import contract  # noqa: E402
from asyncproof.monitoring.contract import MetricSpec  # noqa: E402
from asyncproof.monitoring.exposition import Exposition  # noqa: E402
from asyncproof.monitoring.metrics import make_metric  # noqa: E402
from asyncproof.monitoring.multiprocess import MultiprocessCollector, mark_process_dead  # noqa: E402
from asyncproof.monitoring.render import render  # noqa: E402

OURS = os.path.join(ROOT, "asyncproof")
THEIRS = os.path.join(ROOT, "prometheus_client")
# (status, seconds) of each route's requests: two status series per route
REQUESTS = (("200", 0.004), ("200", 0.03), ("404", 0.002))


def write_worker_files(routes: int) -> None:
    """In a forked worker: what a worker that served every route has written."""
    values.ValueClass = values.MultiProcessValue()
    spec = contract.HTTP_SERVER_REQUEST_DURATION
    requests = Histogram(
        spec.name, spec.help, spec.labels, registry=None, buckets=contract.HTTP_DURATION_BUCKETS
    )
    for route in range(routes):
        for status, seconds in REQUESTS:
            requests.labels("GET", f"/route{route}/{{item_id}}", status).observe(seconds)
    make_metric(contract.HTTP_SERVER_ACTIVE_REQUESTS, None).labels("GET").set(1)
    make_metric(contract.ASYNCIO_EVENT_LOOP_LAG, None).observe(0.0004)
    make_metric(contract.ANYIO_THREADPOOL_TOTAL, None).set(40)
    for per_process in contract.ALL_METRICS:
        if per_process.per_process:
            gauge = MetricSpec(per_process.exposed_name, "gauge", per_process.help, gauge_mode="liveall")
            make_metric(gauge, None).set(1.0)


def run_worker(routes: int) -> int:
    """Fork a worker that writes its files and exits; link them into both folders."""
    pid = os.fork()
    if pid == 0:
        try:
            write_worker_files(routes)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    for name in os.listdir(WRITTEN):
        for folder in (OURS, THEIRS):
            os.link(os.path.join(WRITTEN, name), os.path.join(folder, name))
        os.remove(os.path.join(WRITTEN, name))
    return pid


def median_ms(scrape: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        scrape()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def once_ms(scrape: Callable[[], object]) -> float:
    return median_ms(scrape, 1)


def theirs_scrape() -> Callable[[], bytes]:
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry, path=THEIRS)
    return lambda: generate_latest(registry)


@dataclass
class Breakdown:
    read: float
    merge: float
    render: float


def breakdown(repeats: int) -> Breakdown:
    """asyncproof's scrape in its three steps, on a warm collector (its private steps, timed apart)."""
    collector = MultiprocessCollector(OURS)
    families = list(collector.collect())
    render(families, None)
    plan = collector._read()
    return Breakdown(
        read=median_ms(collector._read, repeats),
        merge=median_ms(lambda: collector._merge(plan), repeats),
        render=median_ms(lambda: render(families, None), repeats),
    )


def fresh_folders() -> None:
    for folder in (OURS, THEIRS):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)


def curve_row(count: int, width: int, repeats: int, their_repeats: int, theirs_up_to: int) -> str:
    fresh_folders()
    for _ in range(count):
        run_worker(width)
    ours = Exposition(CollectorRegistry(), OURS)
    ours_cold = once_ms(lambda: ours.render(None))
    samples = sum(len(family.samples) for family in ours.registry.collect())
    ours_ms = median_ms(lambda: ours.render(None), repeats)
    parts = breakdown(repeats)
    if count * width <= theirs_up_to:
        scrape = theirs_scrape()
        theirs_cold = once_ms(scrape)
        theirs_ms = median_ms(scrape, their_repeats)
        theirs = f"{theirs_ms:11.1f} {theirs_cold:7.1f} {theirs_ms / ours_ms:5.1f}x"
    else:
        theirs = f"{'skipped':>11} {'':7} {'':6}"
    return (
        f"{count:7} {width:6} {samples:7} | {ours_ms:10.1f} {ours_cold:7.1f} | {theirs} | "
        f"{parts.read:5.1f} {parts.merge:6.1f} {parts.render:6.1f}"
    )


def curve(workers: list[int], routes: list[int], repeats: int, their_repeats: int, theirs_up_to: int) -> None:
    print(f"scrape cost in ms, median of {repeats} scrapes (prometheus_client: {their_repeats})")
    print(
        f"{'workers':>7} {'routes':>6} {'samples':>7} | {'asyncproof':>10} {'cold':>7} | "
        f"{'prom_client':>11} {'cold':>7} {'ratio':>6} | {'read':>5} {'merge':>6} {'render':>6}"
    )
    for count in workers:
        for width in routes:
            print(curve_row(count, width, repeats, their_repeats, theirs_up_to), flush=True)


def restarts(count: int, width: int, total: int, repeats: int, their_repeats: int, theirs_up_to: int) -> None:
    fresh_folders()
    live = [run_worker(width) for _ in range(count)]
    ours = Exposition(CollectorRegistry(), OURS)
    theirs = theirs_scrape()
    ours.render(None)
    print(f"{count} workers x {width} routes, {total} restarts; scrape cost in ms, median of {repeats}")
    print(f"scrapes (prometheus_client: {their_repeats}); 'first': asyncproof's first after a restart")
    print(
        f"{'':22} {'asyncproof':>10} {'first':>7} {'prom_client':>11} {'ratio':>6} {'files ours/theirs':>18}"
    )

    def report(label: str, first: float, workers_seen: int) -> None:
        ours_ms = median_ms(lambda: ours.render(None), repeats)
        if workers_seen * width <= theirs_up_to:  # prometheus_client reads every worker's files yet
            theirs_ms = median_ms(theirs, their_repeats)
            compared = f"{theirs_ms:11.1f} {theirs_ms / ours_ms:5.1f}x"
        else:
            compared = f"{'skipped':>11} {'':6}"
        files = f"{len(os.listdir(OURS)) - 1}/{len(os.listdir(THEIRS))}"  # less our lock file
        print(f"{label:22} {ours_ms:10.1f} {first:7.1f} {compared} {files:>18}", flush=True)

    report("at start", once_ms(lambda: ours.render(None)), count)
    step = max(1, total // 5)
    for restart in range(1, total + 1):
        # a worker dies (max_requests, a crash) and its replacement serves the same routes
        dead = live.pop(0)
        mark_process_dead(dead, OURS)
        prom_multiprocess.mark_process_dead(dead, THEIRS)
        live.append(run_worker(width))
        if restart % step == 0:
            report(f"after {restart} restarts", once_ms(lambda: ours.render(None)), count + restart)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--routes", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument(
        "--restarts",
        type=int,
        default=0,
        help="replace workers this many times (first --workers and --routes)",
    )
    parser.add_argument("--repeats", type=int, default=15, help="scrapes timed for asyncproof")
    parser.add_argument("--their-repeats", type=int, default=3, help="scrapes timed for prometheus_client")
    parser.add_argument(
        "--theirs-up-to",
        type=int,
        default=25_000,
        metavar="WORKERS_X_ROUTES",
        help="time prometheus_client only where (workers, dead ones included) x routes is at most this",
    )
    args = parser.parse_args()
    try:
        if args.restarts:
            restarts(
                args.workers[0],
                args.routes[0],
                args.restarts,
                args.repeats,
                args.their_repeats,
                args.theirs_up_to,
            )
        else:
            curve(args.workers, args.routes, args.repeats, args.their_repeats, args.theirs_up_to)
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
