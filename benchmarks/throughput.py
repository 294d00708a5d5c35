"""End-to-end throughput under wrk: one Uvicorn worker, bare vs instrumented, interleaved rounds.

The server is pinned to one core and wrk to the other (taskset), all variants run side by side on
their own loopback ports, and each round runs wrk against every variant in a rotating order. The
figure is the median over rounds of (variant requests/s) / (bare requests/s) in that round.

    .venv/bin/python benchmarks/throughput.py [--rounds 5] [--duration 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.processes import free_port  # noqa: E402

VARIANTS = {
    "bare": {"ASYNCPROOF_BENCH_VARIANT": "bare"},
    "asyncproof": {"ASYNCPROOF_BENCH_VARIANT": "asyncproof"},
    "asyncproof (multiprocess)": {"ASYNCPROOF_BENCH_VARIANT": "asyncproof", "PROMETHEUS_MULTIPROC_DIR": ""},
}


def start(variant: str, env_extra: dict[str, str], folder: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(env_extra)
    if "PROMETHEUS_MULTIPROC_DIR" in env_extra:
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(dir=folder)
    uvicorn = str(Path(sys.executable).parent / "uvicorn")
    command = ["taskset", "-c", "0", uvicorn, "benchmarks.throughput_app:app", "--port", str(port)]
    command += ["--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/items/1", timeout=1).read()
            return process, port
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{variant} server did not start") from None
            time.sleep(0.1)


def wrk(port: int, duration: int, connections: int) -> float:
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    command.append(f"http://127.0.0.1:{port}/items/42")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} failed responses")
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise RuntimeError(f"could not read wrk's output:\n{output}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per variant per round")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install {'wrk' if tool == 'wrk' else 'util-linux'}")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs two cores: one for the server, one for wrk")
    folder = tempfile.mkdtemp(prefix="asyncproof-throughput-")
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for variant, env in VARIANTS.items():
            servers[variant] = start(variant, env, folder)
        names = list(VARIANTS)
        for _, port in servers.values():  # warm-up
            wrk(port, 1, args.connections)
        results: dict[str, list[float]] = {name: [] for name in names}
        for round_number in range(args.rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                results[name].append(wrk(servers[name][1], args.duration, args.connections))
        setup = f"wrk -t1 -c{args.connections}, {args.rounds} rounds x {args.duration}s"
        print(f"{setup}, server on core 0, wrk on core 1")
        print(f"{'variant':28} {'req/s (median)':>15} {'ratio to bare':>14}")
        for name in names:
            ratios = [v / b for v, b in zip(results[name], results["bare"], strict=True)]
            print(f"{name:28} {statistics.median(results[name]):15.0f} {statistics.median(ratios):14.3f}")
    finally:
        for process, _ in servers.values():
            os.killpg(process.pid, signal.SIGTERM)
        for process, _ in servers.values():
            process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
