"""Counts scraped after workers are SIGKILLed under load, against the answers clients received.

The reference app runs under Gunicorn (``asyncproof serve``) on loopback; client threads send
``GET /items/{id}`` (a mix of 200 and 404) and ``POST /items`` (201) over fresh connections for
``--seconds``, while ``--kills`` workers are SIGKILLed at even intervals. After the load, once the
killed workers' files are retired, one scrape is compared with the answers, per route and status.
Requests cut off by a kill get no answer and count on neither side.

    .venv/bin/python benchmarks/sigkill.py [--seconds 12] [--kills 3] [--workers 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.processes import (
    BIN,
    children,
    free_port,
    request_count,
    running,
    scrape,
    wait_for,
    wait_for_workers,
)

Answer = tuple[str, str, int]  # method, route label, status


def client(url: str, stop: threading.Event, answered: Counter[Answer], lock: threading.Lock) -> None:
    host, port = url.removeprefix("http://").split(":")
    seen: Counter[Answer] = Counter()
    while not stop.is_set():
        number = random.randrange(1, 1200)  # items the app made answer 200, the rest 404
        method, path, route = random.choice(
            [("GET", f"/items/{number}", "/items/{item_id}")] * 3 + [("POST", "/items", "/items")]
        )
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            body = b'{"name": "x"}' if method == "POST" else None
            connection.request(method, path, body=body, headers={"content-type": "application/json"})
            response = connection.getresponse()
            response.read()
            seen[method, route, response.status] += 1
        except (OSError, http.client.HTTPException):
            pass  # cut off by a kill: no answer
        finally:
            connection.close()
    with lock:
        answered.update(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="asyncproof-sigkill-"))
    metrics_dir = folder / "metrics"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "ASYNCPROOF_DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'app.db'}",
    }
    command = [str(BIN / "asyncproof"), "serve", "--workers", str(args.workers), "--port", str(port)]
    with running(command, env=env, log=folder / "server.log") as process:
        wait_for(f"{url}/health/ready", deadline=60, process=process)
        gunicorn = process.pid
        wait_for_workers(gunicorn, args.workers)
        stop, lock, answered = threading.Event(), threading.Lock(), Counter[Answer]()
        threads = [
            threading.Thread(target=client, args=(url, stop, answered, lock)) for _ in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        killed = []
        try:
            for _ in range(args.kills):
                time.sleep(args.seconds / (args.kills + 1))
                victim = random.choice(children(gunicorn))
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            time.sleep(args.seconds / (args.kills + 1))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        deadline = time.monotonic() + 30
        while any(name.endswith(f"_{pid}.db") for name in os.listdir(metrics_dir) for pid in killed):
            if time.monotonic() > deadline:
                sys.exit("the killed workers' files were not retired within 30 s")
            time.sleep(0.2)
        samples = scrape(url)
    load = f"{args.clients} clients for {args.seconds:.0f} s"
    print(f"{args.workers} Gunicorn workers, {load}, {len(killed)} SIGKILLs")
    print(f"{'request':32} {'answered':>9} {'scraped':>9} {'lost':>6}")
    lost = 0.0
    for (method, route, status), count in sorted(answered.items()):
        scraped = request_count(samples, method, route, status)
        lost += count - scraped
        print(
            f"{method + ' ' + route + ' ' + str(status):32} {count:9d} {scraped:9.0f} {count - scraped:6.0f}"
        )
    print(f"answered {sum(answered.values())}, lost {lost:.0f}")


if __name__ == "__main__":
    main()
