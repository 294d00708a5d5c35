"""What each instrumentation adds to a request, counted under Valgrind instead of timed.

Wall-clock figures on a shared virtual machine move by a microsecond or two from run to run, which is
as large as the differences that matter here. Callgrind counts the instructions a request executes and
simulates the caches, so the same code gives the same figures on every run. Each variant runs in two
processes under callgrind — one that only builds and warms the app, one that then serves ``--requests``
more requests — and the difference, divided by the request count, is the cost of one request. The
estimate of cycles weighs each first-level cache miss as 10 instructions and each last-level miss as
100, the model CodSpeed uses. The app and the requests are those of ``benchmarks/overhead.py``.

    .venv/bin/python benchmarks/overhead_callgrind.py [--requests 3000] [--jobs 2]

Needs Valgrind (``apt-get install valgrind``); about 9 minutes on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.overhead import LABELS, build, receive, scope, send

VARIANTS = ["bare", "asyncproof", "asyncproof-ids", "instrumentator", "starlette-exporter"]
WARM_UP = 300
L1_MISS_WEIGHT = 10
LL_MISS_WEIGHT = 100


def serve(variant: str, requests: int) -> None:
    """The measured process: build and warm the app, then serve ``requests`` requests."""
    app, after_batch = build(variant)

    async def run(count: int) -> None:
        for i in range(count):
            await app(scope(f"/items/{i}"), receive, send)
        after_batch()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(run(WARM_UP))
    # Start-up objects leave the collector's generations, so that a full collection landing inside
    # one run and not in the other does not count as request cost.
    gc.collect()
    gc.freeze()
    loop.run_until_complete(run(requests))
    loop.close()


def events(variant: str, requests: int, folder: Path) -> dict[str, int]:
    """Callgrind's totals for one process serving ``requests`` requests after the warm-up."""
    out = folder / f"{variant}.{requests}.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--cache-sim=yes",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--serve",
        variant,
        "--requests",
        str(requests),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    subprocess.run(command, env=env, check=True, capture_output=True)
    names: list[str] = []
    totals: list[int] = []
    for line in out.read_text().splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith(("summary:", "totals:")):
            totals = [int(value) for value in line.split()[1:]]
            break
    return dict(zip(names, totals, strict=False))


def per_request(variant: str, requests: int, folder: Path) -> dict[str, float]:
    base, served = events(variant, 0, folder), events(variant, requests, folder)
    diff = {name: (served[name] - base.get(name, 0)) / requests for name in served}
    l1 = diff.get("I1mr", 0) + diff.get("D1mr", 0) + diff.get("D1mw", 0)
    ll = diff.get("ILmr", 0) + diff.get("DLmr", 0) + diff.get("DLmw", 0)
    cycles = diff["Ir"] + L1_MISS_WEIGHT * l1 + LL_MISS_WEIGHT * ll
    return {"instructions": diff["Ir"], "l1_misses": l1, "ll_misses": ll, "cycles": cycles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests counted per variant")
    parser.add_argument("--jobs", type=int, default=2, help="variants measured at once")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.requests)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    with (
        tempfile.TemporaryDirectory(prefix="asyncproof-callgrind-") as directory,
        ThreadPoolExecutor(args.jobs) as pool,
    ):
        futures = {v: pool.submit(per_request, v, args.requests, Path(directory)) for v in VARIANTS}
        results = {variant: future.result() for variant, future in futures.items()}
    bare = results["bare"]
    print(f"per request, counted under callgrind over {args.requests} requests (deterministic)")
    print(f"{'variant':48} {'instructions':>12} {'L1 misses':>10} {'est. cycles':>12} {'added':>8}")
    for variant, figures in results.items():
        label = "bare FastAPI" if variant == "bare" else LABELS[variant]
        added = figures["cycles"] / bare["cycles"] - 1
        print(
            f"{label:48} {figures['instructions']:12.0f} {figures['l1_misses']:10.0f} "
            f"{figures['cycles']:12.0f} {added:8.1%}"
        )


if __name__ == "__main__":
    main()
