"""Python bytecodes each instrumentation adds to a request: a count that does not depend on the machine.

On a request as small as one JSON route, time follows the bytecodes the interpreter runs (each one
dispatched, most touching an object), so this count tracks the in-process overhead of
``benchmarks/overhead.py`` without its noise: the same code, on the same CPython and library versions,
gives the same count on every run and every machine. Each variant's app (those of
``benchmarks/overhead.py``) serves a few requests to warm up, then ``--requests`` requests under a
tracer that counts opcode events (``frame.f_trace_opcodes``), grouped by the file that runs them.
Python-level code, prometheus_client's included, is counted; C-level work such as dict operations and
clock reads is not, which is why the callgrind script reports instructions as well. asyncproof's flush
runs outside the traced requests: a few hundred bytecodes per series per flush (one a second), however
many requests it drains.

    .venv/bin/python benchmarks/overhead_bytecodes.py [--requests 20] [--files]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.overhead import GROUPS, LABELS, build, receive, scope, send

WARM_UP = 50


def count(variant: str, requests: int) -> Counter[str]:
    """Bytecodes run per file while ``variant``'s app serves ``requests`` requests."""
    app, after_batch = build(variant)
    loop = asyncio.new_event_loop()

    async def serve(number: int) -> None:
        for i in range(number):
            await app(scope(f"/items/{i}"), receive, send)

    loop.run_until_complete(serve(WARM_UP))
    after_batch()
    counts: Counter[str] = Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            counts[frame.f_code.co_filename] += 1
        return tracer

    sys.settrace(tracer)
    try:
        loop.run_until_complete(serve(requests))
    finally:
        sys.settrace(None)
        loop.close()
    return counts


def short(filename: str) -> str:
    return filename.split("site-packages/")[-1].removeprefix(
        str(Path(__file__).resolve().parent.parent) + "/"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--files", action="store_true", help="show the files whose bytecodes a variant adds")
    args = parser.parse_args()
    counts = {variant: count(variant, args.requests) for variant in GROUPS["single"]}
    bare = sum(counts["bare"].values()) / args.requests
    print(f"Python bytecodes per request, {args.requests} requests per variant")
    print(f"{'variant':48} {'added':>7} {'x bare':>7}")
    print(f"{'bare FastAPI':48} {bare:7.0f}")
    for variant, files in counts.items():
        if variant == "bare":
            continue
        added = sum(files.values()) / args.requests - bare
        print(f"{LABELS[variant]:48} {added:7.0f} {(bare + added) / bare:7.3f}")
        if args.files:
            extra = files.copy()
            extra.subtract(counts["bare"])
            for filename, number in extra.most_common(5):
                if number > 0:
                    print(f"    {number / args.requests:7.0f}  {short(filename)}")


if __name__ == "__main__":
    main()
