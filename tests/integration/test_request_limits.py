"""Bounded request cost on the real servers, on loopback: the reference app under Gunicorn and under
``uvicorn --workers`` (both started by ``asyncproof serve``), and behind the shipped nginx.conf.

The oversized requests are written on raw sockets, as an abusive client would: a 20 MB
``Content-Length`` whose body is never sent (the answer must come without it), a chunked body that
does not stop, a 1 MB header. Each test sends a bounded number of them.
"""

from __future__ import annotations

import json
import select
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.nginx import nginx_command
from tests.processes import BIN, free_port, running, wait_for, wait_for_workers

pytestmark = pytest.mark.integration

MB = 1_000_000
LIMIT = 1_048_576  # ASYNCPROOF_MAX_BODY_BYTES's default
WORKERS = 2
# What the issue asks: a 20 MB body refused within 50 ms, liveness within 100 ms during a flood.
REFUSAL_SECONDS = 0.05
LIVENESS_SECONDS = 0.1


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float  # from the first byte sent to the last byte of the answer

    def json(self) -> object:
        return json.loads(self.body)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a complete head: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def exchange(port: int, head: bytes, body: bytes = b"", chunk: bytes | None = None) -> Answer:
    """Send ``head`` and ``body`` on a new connection (then ``chunk`` over and over, up to 64 MB, until
    the server answers) and read the answer. A server that closes while we still send is fine: what
    it answered before is read all the same."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.perf_counter()
        try:
            sock.sendall(head + body)
            sent = 0
            while chunk is not None and sent < 64 * MB and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, content = read_answer(sock)
        return Answer(status, headers, content, time.perf_counter() - started)


def post_head(path: str = "/work/sync", **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: limits.test", "Content-Type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def body_of_20_mb_announced(port: int) -> Answer:
    return exchange(port, post_head(Content_Length=str(20 * 1024 * 1024)))


def chunked_body_that_does_not_stop(port: int) -> Answer:
    piece = 64 * 1024
    return exchange(
        port, post_head(Transfer_Encoding="chunked"), chunk=b"%x\r\n%s\r\n" % (piece, b"0" * piece)
    )


def header_of_1_mb(port: int) -> Answer:
    return exchange(
        port, b"GET /health/live HTTP/1.1\r\nHost: limits.test\r\nX-Big: " + b"a" * MB + b"\r\n\r\n"
    )


ARRAY_OF_1_MB = json.dumps([0] * (MB // 3)).encode()
NESTED_1_MB = b"[" * (MB // 2) + b"]" * (MB // 2)


def invalid_body_of_1_mb(port: int) -> Answer:
    return exchange(port, post_head(Content_Length=str(len(ARRAY_OF_1_MB))), ARRAY_OF_1_MB)


def deeply_nested_body(port: int) -> Answer:
    return exchange(port, post_head(Content_Length=str(len(NESTED_1_MB))), NESTED_1_MB)


def live(port: int) -> Answer:
    return exchange(port, b"GET /health/live HTTP/1.1\r\nHost: limits.test\r\nConnection: close\r\n\r\n")


def spread(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return (
        f"{len(ms)} samples, ms: min {ms[0]:.1f}, median {statistics.median(ms):.1f}, p95 {p95:.1f}, "
        f"max {ms[-1]:.1f}"
    )


@dataclass
class Served:
    port: int
    workers: list[int]

    def worker_cpu_seconds(self) -> float:
        return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in self.workers)


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp(request.param)
    port = free_port()
    command = [str(BIN / "asyncproof"), "serve", "--server", request.param]
    command += ["--workers", str(WORKERS), "--port", str(port)]
    env = {"ASYNCPROOF_STATE_DIR": str(folder / "state"), "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics")}
    with running(command, env=env, log=folder / "server.log") as process:
        wait_for(f"http://127.0.0.1:{port}/health/ready", process=process, deadline=60)
        yield Served(port, wait_for_workers(process.pid, WORKERS))


def test_a_20_mb_body_is_refused_before_it_is_sent(served: Served) -> None:
    cpu_before = served.worker_cpu_seconds()
    answers = [body_of_20_mb_announced(served.port) for _ in range(20)]
    cpu = (served.worker_cpu_seconds() - cpu_before) / len(answers)
    for answer in answers:
        assert answer.status == 413
        assert answer.json() == {"detail": f"request body larger than {LIMIT} bytes"}
        assert answer.headers["connection"] == "close"
    seconds = [answer.seconds for answer in answers]
    print(f"20 MB Content-Length, time to the 413: {spread(seconds)}; worker CPU {cpu * 1000:.2f} ms each")
    # What a refusal costs the workers, whatever else the machine runs: CPU time, not waiting for a CPU.
    assert cpu < REFUSAL_SECONDS
    # As a client sees it: typically well under a millisecond here; a sample now and then waits for a
    # core that other processes hold (75 ms seen once in 16 runs with both cores saturated).
    assert statistics.median(seconds) < REFUSAL_SECONDS, spread(seconds)
    assert sorted(seconds)[17] < REFUSAL_SECONDS, spread(seconds)  # 18 of 20


def test_a_chunked_body_is_refused_once_past_the_limit(served: Served) -> None:
    answer = chunked_body_that_does_not_stop(served.port)
    assert answer.status == 413
    assert answer.json() == {"detail": f"request body larger than {LIMIT} bytes"}


def test_a_1_mb_header_is_refused(served: Served) -> None:
    answer = header_of_1_mb(served.port)
    assert answer.status == 431
    assert answer.json() == {"detail": "request line and headers larger than 16384 bytes"}
    assert live(served.port).status == 200  # the worker that refused it serves on


def test_a_validation_error_on_a_1_mb_body_quotes_an_excerpt(served: Served) -> None:
    answer = invalid_body_of_1_mb(served.port)
    assert answer.status == 422
    assert len(answer.body) < 1000
    [error] = answer.json()["detail"]  # type: ignore[index]
    assert error["input"].startswith("[0, 0, 0")
    assert error["input"].endswith("(truncated)")


def test_deep_nesting_is_refused_unparsed(served: Served) -> None:
    answer = deeply_nested_body(served.port)
    assert answer.status == 400
    assert answer.json() == {"detail": "the JSON body is nested deeper than 32 levels"}
    assert answer.seconds < 0.5


def test_liveness_stays_fast_while_oversized_requests_arrive(served: Served) -> None:
    # 20 requests over 2 s from 5 threads: each kind 4 times, one every 100 ms.
    kinds: list[tuple[Callable[[int], Answer], int]] = [
        (body_of_20_mb_announced, 413),
        (chunked_body_that_does_not_stop, 413),
        (header_of_1_mb, 431),
        (invalid_body_of_1_mb, 422),
        (deeply_nested_body, 400),
    ]
    start = time.monotonic() + 0.1

    def at(slot: int) -> tuple[int, int]:
        send, expected = kinds[slot % len(kinds)]
        time.sleep(max(0.0, start + slot * 0.1 - time.monotonic()))
        return send(served.port).status, expected

    with ThreadPoolExecutor(5) as pool:
        flood = [pool.submit(at, slot) for slot in range(20)]
        probes = []
        while time.monotonic() < start + 2.2:
            probes.append(live(served.port))
            time.sleep(0.02)
        results = [future.result() for future in flood]
    assert all(status == expected for status, expected in results), results
    assert {probe.status for probe in probes} == {200}
    seconds = [probe.seconds for probe in probes]
    print(f"GET /health/live during the flood ({len(probes)} probes): {spread(seconds)}")
    # Slowest probe seen: under 10 ms here, 63 ms with both cores saturated by other processes.
    assert max(seconds) < LIVENESS_SECONDS, spread(seconds)


# --- behind Nginx -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx_port() -> Iterator[int]:
    # Nginx's workers (user nobody when started as root) write bodies over 16 KiB to client_body_temp
    # under the prefix: pytest's own temporary folders (mode 0700) are closed to them.
    folder = Path(tempfile.mkdtemp(prefix="asyncproof-nginx-"))
    folder.chmod(0o755)
    try:
        yield from _nginx_in_front_of_the_app(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _nginx_in_front_of_the_app(folder: Path) -> Iterator[int]:
    app_port = free_port()
    command = [str(BIN / "asyncproof"), "serve", "--workers", str(WORKERS), "--port", str(app_port)]
    env = {"ASYNCPROOF_STATE_DIR": str(folder / "state"), "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics")}
    with running(command, env=env, log=folder / "app.log") as app:
        wait_for(f"http://127.0.0.1:{app_port}/health/ready", process=app, deadline=60)
        nginx, public, _ = nginx_command(folder, [f"127.0.0.1:{app_port}"])
        with running(nginx, log=folder / "nginx.log") as proxy:
            wait_for(f"http://127.0.0.1:{public}/health/live", process=proxy)
            yield public


@pytest.mark.parametrize(
    ("send", "status", "detail"),
    [
        (body_of_20_mb_announced, 413, f"request body larger than {LIMIT} bytes"),
        (chunked_body_that_does_not_stop, 413, f"request body larger than {LIMIT} bytes"),
        (header_of_1_mb, 431, "request line and headers larger than 16384 bytes"),
    ],
    ids=["20-mb-announced", "chunked", "1-mb-header"],
)
def test_nginx_refuses_what_the_app_would_refuse_before_it_reaches_the_app(
    nginx_port: int, send: Callable[[int], Answer], status: int, detail: str
) -> None:
    answer = send(nginx_port)
    assert answer.status == status
    assert answer.json() == {"detail": detail}  # JSON like the app's, not Nginx's HTML page
    assert "x-worker-pid" not in answer.headers  # no worker saw it


def test_a_1_mb_array_through_nginx_costs_the_app_little(nginx_port: int) -> None:
    answers = [invalid_body_of_1_mb(nginx_port) for _ in range(5)]
    for answer in answers:
        assert answer.status == 422
        assert "x-worker-pid" in answer.headers
        assert len(answer.body) < 1000
    seconds = [answer.seconds for answer in answers]
    print(f"1 MB array through Nginx, time to the 422: {spread(seconds)}")
    assert statistics.median(seconds) < 0.25, spread(seconds)  # the issue measured 0.76 s
