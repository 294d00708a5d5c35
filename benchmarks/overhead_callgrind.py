"""What each instrumentation adds to a request, counted under Valgrind instead of timed.

Wall-clock figures on a shared virtual machine move by a microsecond or two from run to run, which is
as large as the differences that matter here. Callgrind counts the instructions a request executes and
simulates the caches instead. One process builds every variant's app (those of
``benchmarks/overhead.py``), warms them up, freezes the start-up heap (``gc.freeze()``) and then serves
``--requests`` requests with each variant in turn, twice; callgrind dumps its counters before every
``time.sleep(0)``, which the process calls between batches, so each dump holds exactly one batch. The
second pass is reported (the first one warms the simulated caches); the two passes agree to within a
fraction of a percent, and all variants share one heap layout, so differences between them are not
start-up noise. The estimate of cycles weighs each first-level cache miss as 10 instructions and each
last-level miss as 100, the model CodSpeed uses.

    .venv/bin/python benchmarks/overhead_callgrind.py [--requests 1000]

Needs Valgrind (``apt-get install valgrind``); about 6 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.overhead import LABELS, build, receive, scope, send

VARIANTS = ["bare", "asyncproof", "asyncproof-ids", "instrumentator", "starlette-exporter"]
PASSES = 2
WARM_UP = 300
L1_MISS_WEIGHT = 10
LL_MISS_WEIGHT = 100


def serve(requests: int) -> None:
    """The measured process: every variant's batches, separated by ``time.sleep(0)`` (a dump each)."""
    apps = {variant: build(variant) for variant in VARIANTS}

    async def run(variant: str, count: int) -> None:
        app, after_batch = apps[variant]
        for i in range(count):
            await app(scope(f"/items/{i}"), receive, send)
        after_batch()

    loop = asyncio.new_event_loop()
    for variant in VARIANTS:
        loop.run_until_complete(run(variant, WARM_UP))
    # Start-up objects leave the collector's generations, so that a full collection landing inside
    # one batch does not count as request cost.
    gc.collect()
    gc.freeze()
    order = []
    for _ in range(PASSES):
        for variant in VARIANTS:
            time.sleep(0)
            loop.run_until_complete(run(variant, requests))
            order.append(variant)
    time.sleep(0)
    loop.close()
    print(json.dumps(order))


def totals(dump: Path) -> dict[str, int]:
    names: list[str] = []
    for line in dump.read_text().splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith(("summary:", "totals:")):
            values = dict(zip(names, (int(value) for value in line.split()[1:]), strict=False))
            return {name: values.get(name, 0) for name in names}  # trailing zeros may be left out
    raise RuntimeError(f"no totals in {dump}")


def measure(requests: int) -> dict[str, list[dict[str, float]]]:
    """Per variant, per pass: instructions, L1 and last-level misses and estimated cycles per request."""
    with tempfile.TemporaryDirectory(prefix="asyncproof-callgrind-") as directory:
        out = Path(directory) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--dump-before=time_sleep"]
        command += [f"--callgrind-out-file={out}", sys.executable, __file__, "--serve"]
        command += ["--requests", str(requests)]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        served = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        order = json.loads(served.stdout)
        dumps = sorted(Path(directory).glob("callgrind.out.*"), key=lambda path: int(path.suffix[1:]))
        # dump 1 ends at the first sleep (start-up and warm-up); dump k + 2 holds batch k
        results: dict[str, list[dict[str, float]]] = {}
        for index, variant in enumerate(order):
            events = {name: count / requests for name, count in totals(dumps[index + 1]).items()}
            l1 = events["I1mr"] + events["D1mr"] + events["D1mw"]
            ll = events["ILmr"] + events["DLmr"] + events["DLmw"]
            cycles = events["Ir"] + L1_MISS_WEIGHT * l1 + LL_MISS_WEIGHT * ll
            figures = {"instructions": events["Ir"], "l1_misses": l1, "ll_misses": ll, "cycles": cycles}
            results.setdefault(variant, []).append(figures)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per batch")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.requests)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    results = measure(args.requests)
    bare = results["bare"][-1]
    print(f"per request, counted under callgrind, batches of {args.requests} requests (pass 2 of {PASSES})")
    columns = f"{'instructions':>12} {'L1 misses':>10} {'est. cycles':>12} {'added':>8} {'pass 1':>8}"
    print(f"{'variant':48} {columns}")
    for variant, passes in results.items():
        label = "bare FastAPI" if variant == "bare" else LABELS[variant]
        figures = passes[-1]
        added = figures["cycles"] / bare["cycles"] - 1
        first = passes[0]["cycles"] / results["bare"][0]["cycles"] - 1
        print(
            f"{label:48} {figures['instructions']:12.0f} {figures['l1_misses']:10.0f} "
            f"{figures['cycles']:12.0f} {added:8.1%} {first:8.1%}"
        )


if __name__ == "__main__":
    main()
