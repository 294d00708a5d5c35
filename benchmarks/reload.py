"""Requests lost across Gunicorn reloads behind the shipped Nginx: the shipped setup against the stock one.

Each variant: the reference app under Gunicorn (2 workers, app/gunicorn_conf.py) behind
nginx/nginx.conf on loopback, 16 keep-alive client connections alternating ``GET /items/{id}`` and
``POST /work/async`` for ``--seconds``, and two SIGHUPs (a reload: new workers start, the old ones
drain) at a third and two thirds of the run. It prints the requests sent and every answer that was
not a 2xx, per variant:

- ``shipped``: the reference app's worker class (idle connections left to Nginx while draining,
  app/protocol.py) and Nginx's upstream ``keepalive_timeout 5s``;
- ``stock``: ``uvicorn_worker.UvicornWorker`` and a 60 s upstream keep-alive, as before;
- ``recycling``: the shipped setup with Gunicorn's ``max_requests`` at 1,500 (jitter 150), so that
  workers are also replaced one by one all through the run, as a long-lived deployment does.

    .venv/bin/python benchmarks/reload.py [--seconds 15] [--rounds 2]

Loopback only; every process it starts is stopped. Needs Debian's nginx.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.nginx import nginx_command
from tests.processes import BIN, ROOT, free_port, running, wait_for, wait_for_workers

CONNECTIONS = 16
SHIPPED_KEEPALIVE = "        keepalive_timeout 5s;\n"


def run(variant: str, seconds: float, folder: Path) -> Counter[tuple[str, int]]:
    port = free_port()
    env = {"ASYNCPROOF_STATE_DIR": str(folder / "state"), "PROMETHEUS_MULTIPROC_DIR": str(folder / "m")}
    if variant == "recycling":
        env |= {"ASYNCPROOF_MAX_REQUESTS": "1500", "ASYNCPROOF_MAX_REQUESTS_JITTER": "150"}
    (folder / "m").mkdir()
    command = [str(BIN / "gunicorn"), "-c", str(ROOT / "app" / "gunicorn_conf.py")]
    command += ["-w", "2", "-b", f"127.0.0.1:{port}"]
    if variant == "stock":
        command += ["-k", "uvicorn_worker.UvicornWorker"]
    outcomes: Counter[tuple[str, int]] = Counter()
    with running([*command, "asyncproof.app.main:app"], env=env, log=folder / "server.log") as server:
        wait_for(f"http://127.0.0.1:{port}/health/ready", process=server)
        wait_for_workers(server.pid, 2)
        (folder / "nginx").mkdir()
        nginx, public, _ = nginx_command(folder / "nginx", [f"127.0.0.1:{port}"])
        if variant == "stock":
            config = folder / "nginx" / "nginx.conf"
            text = config.read_text()
            assert text.count(SHIPPED_KEEPALIVE) == 1, "nginx.conf no longer has the 5 s upstream keep-alive"
            config.write_text(text.replace(SHIPPED_KEEPALIVE, "        keepalive_timeout 60s;\n"))
        with running(nginx, log=folder / "nginx" / "out.log"):
            base = f"http://127.0.0.1:{public}"
            wait_for(f"{base}/health/live")
            item = httpx.post(f"{base}/items", json={"name": "reload"}).json()["id"]
            done = threading.Event()
            lock = threading.Lock()

            def client() -> None:
                with httpx.Client(base_url=base, timeout=10) as http:
                    number = 0
                    while not done.is_set():
                        number += 1
                        if number % 2:
                            status, kind = http.get(f"/items/{item}").status_code, "GET"
                        else:
                            body = {"kind": "io", "duration_ms": 1}
                            status, kind = http.post("/work/async", json=body).status_code, "POST"
                        with lock:
                            outcomes[kind, status] += 1

            threads = [threading.Thread(target=client) for _ in range(CONNECTIONS)]
            for thread in threads:
                thread.start()
            try:
                for _ in range(2):
                    time.sleep(seconds / 3)
                    os.kill(server.pid, signal.SIGHUP)
                time.sleep(seconds / 3)
            finally:
                done.set()
                for thread in threads:
                    thread.join()
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{'variant':9} {'round':>5} {'requests':>9} {'non-2xx':>8}  detail")
    for round_number in range(1, args.rounds + 1):
        for variant in ("stock", "shipped", "recycling"):
            with tempfile.TemporaryDirectory(prefix="asyncproof-reload-") as folder:
                outcomes = run(variant, args.seconds, Path(folder))
            total = sum(outcomes.values())
            failed = {f"{kind} {status}": n for (kind, status), n in outcomes.items() if status >= 300}
            print(f"{variant:9} {round_number:5} {total:9} {sum(failed.values()):8}  {failed or ''}")


if __name__ == "__main__":
    main()
