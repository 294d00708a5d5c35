"""One exposition process per deployment: ``/metrics`` answered outside the serving workers.

In multiprocess mode with ``metrics_port`` set, each worker keeps one process of its deployment
serving that port (:class:`ExpositionKeeper`): at start and then every ``report_interval``, from a
thread of its own, it looks whether a process holds ``.exposition.lock`` in the metrics folder and,
if none does, starts one (this module's :func:`main` in a new Python process, in a session of its
own) under a lock that makes the workers take turns. That process sums the workers' files, answers
scrapes, retires dead workers, and exits within a second of its deployment (the Gunicorn master,
uvicorn's supervisor) going. A scrape so never holds a worker's GIL (it costs the machine the CPU
it uses, nothing more), and answers while every worker's loop is blocked. The same works under
Gunicorn and ``uvicorn --workers``: nothing depends on a master hook.

It also shows what a blocked worker's own sampler cannot record. Each sampler tick writes when the
next tick is due (a per-worker heartbeat, :data:`HEARTBEAT`, never exported); a scrape that finds a
live worker's tick overdue reports the stall so far as that worker's
``asyncio_event_loop_lag_max_seconds`` (:func:`with_live_stalls`), in the worker-rendered
``/metrics`` as well.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import gzip
import json
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import psutil
from prometheus_client.exposition import gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from asyncproof.monitoring import contract
from asyncproof.monitoring.contract import MetricSpec
from asyncproof.monitoring.multiprocess import sweep

__all__ = [
    "HEARTBEAT",
    "ExpositionKeeper",
    "LiveStalls",
    "deployment_pid",
    "main",
    "serving_pid",
    "with_live_stalls",
]

log = logging.getLogger("asyncproof.monitoring")

HEARTBEAT = MetricSpec(
    "asyncproof_loop_next_tick_monotonic_seconds",
    "gauge",
    "time.monotonic() by which this worker's lag sampler runs again if its event loop is free "
    "(0: not running). Read by the exposition, never exported.",
    gauge_mode="liveall",
)
LOCK_FILE = ".exposition.lock"  # held by the exposition process for its lifetime; holds its pid
SPAWN_LOCK_FILE = ".exposition.spawn.lock"  # the workers take turns to look and start one
STATE_FILE = ".exposition.state"  # failures in a row and when to try again, shared by the workers
LOG_FILE = ".exposition.log"  # the exposition processes' own stderr

# Not 3 or 4: a Gunicorn that is PID 1 (a container) reaps orphans, and older releases halt the
# whole server on a child that exits with WORKER_BOOT_ERROR (3) or APP_LOAD_ERROR (4).
EXIT_PORT_TAKEN = 73
EXIT_ALREADY_RUNNING = 75
EXIT_CANNOT_LISTEN = 76
READY = b"ready\n"
READY_TIMEOUT = 15.0  # seconds for a new process to import and listen, on a busy 2-core machine
SHORT_LIFE = 5.0  # an exposition process that dies younger than this counts as a failed start
MAX_BACKOFF = 60.0
_LAG_MAX = contract.ASYNCIO_EVENT_LOOP_LAG_MAX


# -- the stall a blocked worker cannot report ------------------------------------------------------


def with_live_stalls(families: Iterable[Metric], now: float | None = None) -> list[Metric]:
    """The collected families with each live worker's current stall folded into its lag max.

    A worker whose sampler tick is overdue (its :data:`HEARTBEAT` is in the past) has a loop stuck
    for at least that long: its ``asyncio_event_loop_lag_max_seconds`` becomes the larger of what
    it stored and the stall so far. The heartbeat family itself is dropped.
    """
    kept: list[Metric] = []
    due: dict[str, float] = {}
    lag_max: Metric | None = None
    for family in families:
        if family.name == HEARTBEAT.name:
            due = {s.labels["pid"]: s.value for s in family.samples if "pid" in s.labels}
            continue
        if family.name == _LAG_MAX.name:
            lag_max = family
        kept.append(family)
    now = time.monotonic() if now is None else now
    stalls = {pid: now - at for pid, at in due.items() if 0 < at < now and _pid_alive(pid)}
    if not stalls:
        return kept
    merged = Metric(_LAG_MAX.name, _LAG_MAX.help, "gauge")
    for sample in lag_max.samples if lag_max is not None else ():
        stall = stalls.pop(sample.labels.get("pid", ""), 0.0)
        merged.samples.append(sample._replace(value=max(sample.value, stall)))
    merged.samples.extend(Sample(_LAG_MAX.name, {"pid": pid}, stall) for pid, stall in stalls.items())
    return [merged if family is lag_max else family for family in kept] + ([] if lag_max else [merged])


class LiveStalls(Collector):
    """A collector's families passed through :func:`with_live_stalls`."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterable[Metric]:
        return with_live_stalls(self.collector.collect())


def _pid_alive(pid: str) -> bool:
    # A worker that died is retired within a second (child_exit, a sweep); until then its last
    # heartbeat must not read as a stall that keeps growing.
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):
        return True  # a pid we may not signal is somebody's live process
    return True


# -- the workers' side: keep one exposition process running ----------------------------------------


def deployment_pid() -> int:
    """The process an exposition process started from here lives as long as: the server that started
    this worker (Gunicorn's master, uvicorn's supervisor or reloader), or this process when it
    serves alone."""
    if multiprocessing.parent_process() is not None or "gunicorn.arbiter" in sys.modules:
        return os.getppid()
    return os.getpid()


def serving_pid(path: str) -> int | None:
    """The pid of the exposition process serving the metrics folder ``path``, or ``None``.

    0 when one holds the lock but has not written its pid yet.
    """
    try:
        fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        return None  # nobody holds it (closing releases what we just took)
    finally:
        os.close(fd)


class ExpositionKeeper:
    """Keeps this deployment's exposition process serving ``host:port`` for the folder ``path``.

    A daemon thread looks every ``interval`` seconds (off the event loop, so it also respawns the
    process while every loop is blocked) and starts one when none serves. Workers take turns under
    a lock in the folder; failed starts (a port taken by another program) back off from 1 s to a
    minute, shared by all the workers, with one warning per streak.
    """

    def __init__(
        self, path: str, host: str, port: int, *, interval: float = 1.0, deployment: int | None = None
    ) -> None:
        self.path = path
        self.host = host
        self.port = port
        self.interval = interval
        self.deployment = deployment_pid() if deployment is None else deployment
        self._parent = os.getppid()
        self._child: subprocess.Popen[bytes] | None = None
        self._wake = threading.Event()
        self._checked = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._orphan_logged = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="asyncproof-exposition-keeper", daemon=True
            )
            self._thread.start()

    def wait_checked(self, timeout: float = READY_TIMEOUT + 5) -> bool:
        """Block until the first look is done (the port is served, or this deployment knows why
        not); from a thread, not the event loop."""
        return self._checked.wait(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop looking. The exposition process stays: the other workers use it, and it exits with
        the deployment."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._reap()

    def _run(self) -> None:
        while not self._stopping:
            try:
                self.ensure()
            except Exception:  # never let the keeper die: the next look may succeed
                log.exception("asyncproof could not check the exposition process of %s", self.path)
            self._checked.set()
            self._wake.wait(self.interval)
            self._wake.clear()

    def ensure(self) -> int | None:
        """One look: the serving process's pid, after starting one if needed and due; else ``None``."""
        self._reap()
        pid = serving_pid(self.path)
        if pid is not None:
            return pid
        if self.deployment != os.getpid() and os.getppid() != self._parent:
            # Our server is gone (SIGKILLed master) and this worker lives on: a process started now
            # would follow a deployment that no longer exists.
            if not self._orphan_logged:
                self._orphan_logged = True
                log.warning(
                    "asyncproof: pid %d lost its server; not restarting the exposition process", os.getpid()
                )
            return None
        with _locked(os.path.join(self.path, SPAWN_LOCK_FILE)):
            pid = serving_pid(self.path)
            if pid is not None or self._stopping:
                return pid
            state = _read_state(self.path)
            if state.get("deployment") != self.deployment:
                state = {}  # an earlier deployment's failures are not ours (a folder used again)
            now = time.monotonic()
            if state.get("started") and 0 <= now - state["started"] < SHORT_LIFE:
                # The last one died young: a crash after listening is a failed start too.
                state["failures"] = state.get("failures", 0) + 1
                state["next_attempt"] = state["started"] + _backoff(state["failures"])
                state["started"] = 0
                self._save(**state)
            if now < state.get("next_attempt", 0):
                return None
            return self._spawn(state)

    def _spawn(self, state: dict[str, Any]) -> int | None:
        code, pid = self._start_child()
        if pid is None and code is None:
            pid = serving_pid(self.path)  # slow to say it is ready, but it holds the lock
        now = time.monotonic()
        failures = int(state.get("failures", 0))
        if pid is not None or code == EXIT_ALREADY_RUNNING:
            if failures:
                log.warning("asyncproof: the exposition process serves /metrics on %s again", self._where)
            self._save(failures=0, next_attempt=0, started=now if pid else 0)
            return pid if pid is not None else serving_pid(self.path)
        failures += 1
        delay = _backoff(failures)
        self._save(failures=failures, next_attempt=now + delay, started=0)
        if failures == 1:
            log.warning(
                "asyncproof: %s; trying again after %g s, then less and less often", self._why(code), delay
            )
        else:
            log.debug("asyncproof: exposition process failed again (%s); next try in %g s", code, delay)
        return None

    def _save(self, **state: Any) -> None:
        _write_state(self.path, {**state, "deployment": self.deployment})

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    def _why(self, code: int | None) -> str:
        if code == EXIT_PORT_TAKEN:
            return (
                f"the metrics port {self._where} is taken by another program, so nothing serves this "
                "deployment's /metrics there; free it or choose another metrics_port"
            )
        detail = _last_line(os.path.join(self.path, LOG_FILE))
        how = "did not start in time" if code is None else f"exited with {code}"
        return f"the exposition process for {self._where} {how}: {detail or 'see ' + LOG_FILE}"

    def _start_child(self) -> tuple[int | None, int | None]:
        """Start an exposition process; (its exit code if it failed, its pid once it serves)."""
        # Its own metrics, were it to make any, must not become a worker's files.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
        }
        command = [
            sys.executable,
            "-P",  # not the working directory first: a folder there named asyncproof must not win
            "-c",
            _BOOT.format(root=_package_root(), module=__name__),
            *("--dir", self.path, "--host", self.host, "--port", str(self.port)),
            *("--deployment-pid", str(self.deployment)),
        ]
        with open(os.path.join(self.path, LOG_FILE), "ab") as log_file:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C or a killpg of the server does not reach it
            )
        self._child = child
        assert child.stdout is not None
        ready = _read_ready(child.stdout, READY_TIMEOUT)
        child.stdout.close()
        if ready:
            return None, child.pid
        try:
            return child.wait(timeout=5), None
        except subprocess.TimeoutExpired:
            return None, None  # still starting: the lock tells the next look whether it made it

    def _reap(self) -> None:
        # A process we started and that exited is our zombie until we wait for it.
        if self._child is not None and self._child.poll() is not None:
            self._child = None


# The same asyncproof as the worker's, wherever that came from (an install, a checkout on sys.path).
_BOOT = (
    "import sys; root = {root!r}; root in sys.path or sys.path.insert(0, root); "
    "from {module} import main; sys.exit(main(sys.argv[1:]))"
)


def _package_root() -> str:
    import asyncproof

    return os.path.dirname(os.path.dirname(os.path.abspath(asyncproof.__file__ or "")))


def _backoff(failures: int) -> float:
    return float(min(MAX_BACKOFF, 2 ** max(0, failures - 1)))


def _read_ready(stream: IO[bytes], timeout: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        received = b""
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            chunk = os.read(stream.fileno(), 64)
            if not chunk:
                break
            received += chunk
            if READY in received:
                return True
    return False


@contextlib.contextmanager
def _locked(name: str) -> Any:
    fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_state(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, STATE_FILE)) as file:
            state = json.load(file)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(path: str, state: dict[str, Any]) -> None:
    with open(os.path.join(path, STATE_FILE), "w") as file:
        json.dump(state, file)


def _last_line(name: str) -> str:
    try:
        with open(name, "rb") as file:
            file.seek(max(0, os.path.getsize(name) - 2000))
            lines = file.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


# -- the exposition process ------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # a restarted process binds at once; SO_REUSEPORT is not wanted
    daemon_threads = True
    render: Any

    def server_bind(self) -> None:
        # HTTPServer's own looks the host's name up (getfqdn), which can wait on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # Prometheus keeps its connection
    timeout = 30  # an idle kept-alive connection does not hold a thread for ever
    server_version = "asyncproof-exposition"

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _not_allowed(self) -> None:
        self._send(405, b"Method Not Allowed\n", "text/plain; charset=utf-8", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _answer(self, head: bool) -> None:
        if self.path.split("?", 1)[0] == "/favicon.ico":
            self._send(404, b"Not Found\n", "text/plain; charset=utf-8", head=head)
            return
        try:
            names = parse_qs(urlsplit(self.path).query).get("name[]")  # as prometheus_client's
            body, content_type = self.server.render(self.headers.get("Accept"), names)
        except Exception:
            log.exception("rendering a scrape failed")
            self._send(500, b"rendering the metrics failed\n", "text/plain; charset=utf-8", head=head)
            return
        headers = {}
        if gzip_accepted(self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(200, body, content_type, headers, head=head)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        *,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _die_with_parent(deployment: int) -> None:
    # Best effort, Linux: when the deployment itself started us (a server of one process), its
    # death signals us at once. Not when a worker started us: the signal follows the thread that
    # forked, not the deployment, and the watch in main() covers every case within 0.2 s anyway.
    if os.getppid() != deployment or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


def _hold_lock(path: str, wait: float) -> int | None:
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            # A worker's serving_pid() holds it for a few microseconds; another exposition process
            # for as long as it lives.
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.01)


def _listen(host: str, port: int) -> _Server:
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    return (_Server6 if family == socket.AF_INET6 else _Server)((host, port), _Handler)


def _alive(process: psutil.Process) -> bool:
    try:  # is_running() also tells a reused pid from the process we were started for
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """The exposition process: ``python -m asyncproof.monitoring.exposition_process --dir D --host H
    --port P --deployment-pid N``. Workers start it (:class:`ExpositionKeeper`); it prints ``ready``
    on stdout once it listens."""
    parser = argparse.ArgumentParser(prog="asyncproof.monitoring.exposition_process")
    parser.add_argument("--dir", required=True, help="the deployment's PROMETHEUS_MULTIPROC_DIR")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deployment-pid", type=int, required=True, help="exit when this process is gone")
    parser.add_argument("--sweep-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s [%(process)d] %(levelname)s asyncproof exposition: %(message)s",
    )
    _die_with_parent(args.deployment_pid)
    try:
        deployment = psutil.Process(args.deployment_pid)
    except psutil.Error:
        log.info("deployment %d is gone before the start", args.deployment_pid)
        return 0
    lock = _hold_lock(args.dir, wait=2.0)
    if lock is None:
        log.info("another exposition process serves %s", args.dir)
        return EXIT_ALREADY_RUNNING
    try:
        server = _listen(args.host, args.port)
    except OSError as error:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, error.strerror or error)
        return EXIT_PORT_TAKEN if error.errno == errno.EADDRINUSE else EXIT_CANNOT_LISTEN
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)

    from prometheus_client import CollectorRegistry

    from asyncproof.monitoring.exposition import Exposition

    exposition = Exposition(CollectorRegistry(auto_describe=False), args.dir)
    rendering = threading.Lock()  # one render at a time: scrapes are few, the CPU is the workers'

    def render(accept: str | None, names: list[str] | None) -> tuple[bytes, str]:
        with rendering:
            return exposition.render(accept, names) if names else exposition.render(accept)

    server.render = render
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=server.serve_forever, name="serve", daemon=True).start()
    with contextlib.suppress(OSError):  # the worker gave up waiting: the lock tells it instead
        os.write(1, READY)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the worker stopped reading; a stray print must not raise EPIPE
    os.close(devnull)
    log.info(
        "serving /metrics of %s on %s:%d for deployment %d",
        args.dir,
        args.host,
        server.server_port,
        args.deployment_pid,
    )
    next_sweep = 0.0
    while not stopping.wait(0.2):
        if not _alive(deployment) or not os.path.isdir(args.dir):
            log.info("deployment %d is gone: exiting", args.deployment_pid)
            break
        if time.monotonic() >= next_sweep:
            try:
                sweep(args.dir)
            except Exception:
                log.exception("sweeping dead workers failed")
            next_sweep = time.monotonic() + args.sweep_interval
    else:
        log.info("stopped by a signal: exiting")
    server.shutdown()
    server.server_close()
    os.close(lock)
    return 0


if __name__ == "__main__":  # python -m asyncproof.monitoring.exposition_process, by hand
    # Run as the module of its real name, not a second copy called __main__.
    from asyncproof.monitoring.exposition_process import main as _main

    sys.exit(_main())
