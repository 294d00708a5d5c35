"""``asyncproof audit``: prove a team's own FastAPI app, route by route.

1. Serve the app as production does: Gunicorn with Uvicorn workers on loopback, instrumented by
   asyncproof unless it instruments itself (:mod:`asyncproof.loadtests.audit_target`); or use a running
   service (``--url``) that exposes asyncproof's ``/metrics``.
2. Read its OpenAPI schema; find valid requests for every route (:mod:`asyncproof.loadtests.openapi_cases`).
3. One Locust run (:mod:`asyncproof.loadtests.audit_locustfile`): the kubelet-like probes throughout,
   each route alone for a phase, then all routes together.
4. Per route, from the samples and scrapes of its phase: requests, p50/p99, error ratio, stalls and
   the line of code blocking the loop, threadpool waiting, probe failures and would-restart events; a
   verdict in ``prove``'s words; the gates file checked; ``report.json``, ``report.html``, ``junit.xml``.

Exit codes: 0 every route as allowed and every gate passed; 1 a route's verdict is not one its gates
allow (``healthy`` unless the gates file says otherwise); 3 a gate failed; 2 bad input (the app cannot
be imported or started, no schema, a wrong gates file or option); 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from asyncproof.loadtests import gates, openapi_cases, stats, verdicts
from asyncproof.loadtests.processes import BIN, free_port, run_bounded, running, wait_for
from asyncproof.loadtests.prove import machine

LOCUSTFILE = Path(__file__).with_name("audit_locustfile.py")
PROBE_THRESHOLD = 3  # the kubelet's failureThreshold; period 1 s and timeout 1 s, as prove's prober
LEAD_SECONDS = 1.5  # users spawn and the probes take a first look before the first phase
BAD_INPUT = 2
VERDICT_NOT_ALLOWED = 1
INTERRUPTED = 130


class AuditError(Exception):
    """Bad input or an app that cannot be audited: the message says what to do (exit 2)."""


@dataclass(frozen=True)
class Profile:
    name: str
    phase_seconds: float  # each route alone
    settle_seconds: float  # after each phase at least, before the next: what it left behind is its own
    settle_max_seconds: float  # at most, while its requests are still being answered or probes fail
    together_seconds: float
    requests_per_route: int  # candidate requests tried per route
    timeout: float  # a request not answered by then is a failure


PROFILES = {
    "quick": Profile(
        "quick",
        phase_seconds=3,
        settle_seconds=0.5,
        settle_max_seconds=8,
        together_seconds=10,
        requests_per_route=5,
        timeout=5,
    ),
    "default": Profile(
        "default",
        phase_seconds=10,
        settle_seconds=2,
        settle_max_seconds=15,
        together_seconds=30,
        requests_per_route=8,
        timeout=10,
    ),
}


# --- the plan: phases as seconds from the start of the run (pure) -------------------------------


LOCUSTFILE_PHASE = "your users"  # the phase (and the report's row) of the team's own Locust users


def phases(
    keys: list[str], profile: Profile, together_seconds: float, *, locustfile: bool = False
) -> list[dict[str, Any]]:
    """Each route alone, one after the other, the team's own users (``-f``) alone, then all of them
    together, as planned: the run moves to the next phase once the last one has settled
    (:class:`asyncproof.loadtests.audit_locustfile.Schedule`)."""
    plan = []
    start = LEAD_SECONDS

    def add(name: str, kind: str, routes: list[str], seconds: float) -> None:
        nonlocal start
        plan.append({"name": name, "kind": kind, "routes": routes, "start": start, "end": start + seconds})
        start += seconds + profile.settle_seconds

    for key in keys:
        add(key, "routes", [key], profile.phase_seconds)
    if locustfile:  # their users take a moment to spawn: a longer phase
        add(LOCUSTFILE_PHASE, "locustfile", [], 2 * profile.phase_seconds)
    if (keys or locustfile) and together_seconds > 0:
        add("together", "together", list(keys), together_seconds)
    return plan


def longest_run(plan: list[dict[str, Any]], profile: Profile) -> float:
    """The run's bound: every phase with the longest settling after it."""
    phases_seconds = sum(phase["end"] - phase["start"] + profile.settle_max_seconds for phase in plan)
    return float(LEAD_SECONDS + phases_seconds + 5)


def windows(ran: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """What each phase owns, in seconds of the run: from its start until the server settled after it
    (a blocked loop keeps failing probes after its route's requests stopped)."""
    return {phase["name"]: (phase["start"], phase["end"]) for phase in ran}


# --- figures of a part of the run (pure) ---------------------------------------------------------


def probe_events(samples: list[stats.Sample], threshold: int, *, restarts: bool) -> list[float]:
    """When the kubelet would act: ``threshold`` probes in a row failed (a liveness probe then starts
    counting again, as the container restarts; readiness acts once until a probe passes). The same
    rule as the prober's own count (:class:`asyncproof.loadtests.users.Probe`), from the samples."""
    events = []
    consecutive = 0
    for ended, _, ok in sorted(samples, key=lambda sample: sample[0] - sample[1] / 1000):
        consecutive = 0 if ok else consecutive + 1
        if consecutive == threshold:
            events.append(ended)
            if restarts:
                consecutive = 0
    return events


def _between(
    samples: list[stats.Sample], start: float, end: float, *, by_start: bool = False
) -> list[stats.Sample]:
    def when(sample: stats.Sample) -> float:
        return sample[0] - sample[1] / 1000 if by_start else sample[0]

    return [sample for sample in samples if start <= when(sample) < end]


def _scrape_at(scrapes: list[stats.Scrape], moment: float) -> stats.Scrape | None:
    """The last scrape taken at or before ``moment`` (the first one if none was)."""
    before = [scrape for scrape in scrapes if scrape.time <= moment]
    return before[-1] if before else (scrapes[0] if scrapes else None)


def window_figures(
    raw: dict[str, Any],
    keys: list[str],
    start: float,
    end: float,
    *,
    routes: list[str] | None = None,
    threshold: int = PROBE_THRESHOLD,
) -> dict[str, Any]:
    """Figures over ``[start, end)`` (absolute times) of the requests of ``keys`` as the load generator
    saw them, the probes, and what the server's scrapes say happened meanwhile: stalls of the server's
    ``routes`` (templates; None: every route's)."""
    samples = raw["samples"]
    mine = [sample for key in keys for sample in _between(samples.get(key, []), start, end)]
    summary = stats.summarize(mine, end - start)
    liveness = samples.get("PROBE liveness", [])
    readiness = samples.get("PROBE readiness", [])
    probes = _between(liveness, start, end, by_start=True) + _between(readiness, start, end, by_start=True)
    scrapes = [stats.scrape_from_dict(data) for data in raw.get("scrapes", [])]
    inside = [scrape for scrape in scrapes if start < scrape.time <= end + 1.0]
    first, last = _scrape_at(scrapes, start), _scrape_at(scrapes, end + 1.0)
    by_route = stats.stalls_between(first, last) if first and last else {}
    stalled = [figures for route, figures in by_route.items() if routes is None or route in routes]
    return {
        "requests": summary.count,
        "failures": summary.failures,
        "fail_ratio": round(summary.fail_ratio, 4) if summary.count else None,
        "p50_ms": summary.p50,
        "p99_ms": summary.p99,
        "max_ms": summary.max,
        "rps": round(summary.rps, 1),
        "probe_failures": sum(1 for _, _, ok in probes if not ok),
        "would_restart": sum(
            1 for when in probe_events(liveness, threshold, restarts=True) if start <= when < end
        ),
        "would_unready": sum(
            1 for when in probe_events(readiness, threshold, restarts=False) if start <= when < end
        ),
        "threadpool_waiting_max": max((scrape.threadpool_waiting for scrape in inside), default=None),
        "loop_lag_max_s": max((scrape.lag_max for scrape in inside), default=None),
        "stalls": int(sum(figures["stalls"] for figures in stalled)),
        "blocked_seconds": round(sum(figures["blocked_seconds"] for figures in stalled), 3),
        "stalled_routes": sorted(route for route, figures in by_route.items() if figures["stalls"] > 0),
    }


# The stall watchdog's log line for a stall in a request (asyncproof.monitoring.stalls).
_STALL = re.compile(
    r"event loop blocked [0-9.]+ s (?P<so_far>so far )?in (?P<method>\S+) (?P<route>\S+) "
    r"(?:at (?P<place>.+?)|(?P<outside>outside application code(?: \(\S+\))?))"
    r"(?: over (?P<more>\d+) more stalls? in the last [0-9.]+ s \([0-9.]+ s the longest\))?$"
)


def blocked_places(log_text: str) -> dict[str, dict[str, int]]:
    """Per route (``METHOD /template``), the places its code blocked the event loop and how often, as
    the stall watchdog logged them."""
    places: dict[str, dict[str, int]] = {}
    for line in log_text.splitlines():
        match = _STALL.search(line)
        if match is None or match.group("so_far"):  # an ongoing stall is logged again once it ends
            continue
        key = f"{match.group('method')} {match.group('route')}"
        place = match.group("place") or match.group("outside")
        counts = places.setdefault(key, {})
        counts[place] = counts.get(place, 0) + int(match.group("more") or 1)
    return places


# --- gates: thresholds of the Locust plugin, plus the verdicts each route may have ----------------


@dataclass(frozen=True)
class Gates:
    conditions: list[gates.Condition]
    allowed: dict[str, tuple[str, ...]]  # route pattern ("*", "POST /reports", "/admin/*", tag) -> verdicts

    def allows(self, route: openapi_cases.Route, verdict: str) -> bool:
        specific = [
            allowed
            for pattern, allowed in self.allowed.items()
            if pattern != "*" and openapi_cases.matches(route, [pattern])
        ]
        allowed = specific[0] if specific else self.allowed.get("*", (verdicts.HEALTHY,))
        head = verdict.split(",")[0].strip()
        return head in (verdicts.HEALTHY, verdicts.SKIPPED) or head in allowed


def load_gates(path: str | None) -> Gates:
    """The gates file: the plugin's ``thresholds`` (optional here) and ``verdicts``, a route (or ``*``,
    a path pattern, a tag) mapped to the verdicts it may have (default: ``healthy`` for every route)."""
    if not path:
        return Gates([], {"*": (verdicts.HEALTHY,)})
    try:
        text = Path(path).read_text()
        document = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except OSError as error:
        raise AuditError(f"cannot read the gates file {path}: {error.strerror}") from error
    except (ValueError, yaml.YAMLError) as error:
        raise AuditError(f"{path} is not valid YAML/JSON: {error}") from error
    if not isinstance(document, dict) or not ({"thresholds", "verdicts"} & set(document)):
        raise AuditError(
            f"{path}: give 'thresholds' (target -> conditions) and/or 'verdicts' (route -> verdicts)"
        )
    conditions: list[gates.Condition] = []
    if "thresholds" in document:
        try:
            conditions = gates.parse_gates(document)
        except gates.GateError as error:
            raise AuditError(f"{path}: {error}") from error
    allowed: dict[str, tuple[str, ...]] = {"*": (verdicts.HEALTHY,)}
    mapping = document.get("verdicts") or {}
    if not isinstance(mapping, dict):
        raise AuditError(
            f"{path}: 'verdicts' maps a route, '*', a path pattern or a tag to a list of verdicts"
        )
    for pattern, words in mapping.items():
        words = [words] if isinstance(words, str) else words
        if not isinstance(words, list) or not words or any(word not in verdicts.SEVERITY for word in words):
            raise AuditError(
                f"{path}: verdicts of {pattern!r}: {words!r} is not a list of verdicts; "
                f"choose from {', '.join(verdicts.SEVERITY)}"
            )
        allowed[str(pattern)] = tuple(words)
    return Gates(conditions, allowed)


def gate_targets(condition: gates.Condition, route: openapi_cases.Route) -> bool:
    """Whether ``condition`` is about ``route`` (its endpoint, its server-side route, or every endpoint)."""
    return condition.target in (route.key, "*", f"route {route.path}")


# --- the command -----------------------------------------------------------------------------------


def parse_headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, colon, text = value.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            raise AuditError(
                f"-H {value!r}: give a header as 'Name: value', e.g. -H 'Authorization: Bearer abc'"
            )
        headers[name.strip()] = text.strip()
    return headers


def read_env_file(path: str) -> dict[str, str]:
    from dotenv import dotenv_values

    if not Path(path).is_file():
        raise AuditError(f"--env-file {path}: no such file")
    return {name: value for name, value in dotenv_values(path).items() if value is not None}


def loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def run_setup(setup: str, cwd: Path, env: dict[str, str], log: Path, timeout: float = 300) -> dict[str, str]:
    """Run ``--setup`` before the server starts: a callable (``package.module:function``, called with no
    argument; a dict it returns is sent as headers, e.g. a token) or a shell command. Its output goes to
    ``log``; a failure stops the audit."""
    if _CALLABLE.match(setup):
        module, _, function = setup.partition(":")
        code = (
            "import importlib, json, sys\n"
            f"sys.path.insert(0, '')\nresult = getattr(importlib.import_module({module!r}), {function!r})()\n"
            "print('\\nASYNCPROOF_SETUP ' + json.dumps(result if isinstance(result, dict) else None))\n"
        )
        command = [sys.executable, "-c", code]
    else:
        command = ["/bin/sh", "-c", setup]
    try:
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
        )
    except subprocess.TimeoutExpired as error:
        raise AuditError(f"--setup {setup!r} did not finish within {timeout:g} s") from error
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise AuditError(f"--setup {setup!r} failed (exit {done.returncode}):\n{tail}")
    marker = [line for line in done.stdout.splitlines() if line.startswith("ASYNCPROOF_SETUP ")]
    returned = json.loads(marker[-1].split(" ", 1)[1]) if marker else None
    return {str(k): str(v) for k, v in (returned or {}).items()}


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI job cancelled) unwinds like Ctrl-C, so every process started is stopped."""

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Auditor:
    def __init__(self, args: Any, echo: Callable[[str], None] = print) -> None:
        self.args = args
        self.echo = echo
        self.profile = PROFILES["quick" if args.quick else "default"]
        self.out = Path(args.out)
        self.gates = load_gates(args.gates)
        self.headers = parse_headers(args.header or [])
        self.app_dir = Path(args.app_dir or ".").resolve()
        if args.url and args.target:
            raise AuditError("give the app (MODULE:APP) or --url, not both")
        if not args.url and not args.target:
            raise AuditError(
                "give the app to audit as MODULE:APP (e.g. app.main:app), or --url of a running one"
            )
        if args.url and not re.match(r"^https?://", args.url):
            raise AuditError(f"--url {args.url!r}: give the service's base URL, e.g. http://127.0.0.1:8000")
        if args.users < 1 or args.rate < 0 or args.workers < 1:
            raise AuditError("--users and --workers must be at least 1, --rate 0 (no limit) or more")
        if args.duration is not None and not 0 <= args.duration <= 3600:
            raise AuditError("--duration is seconds of the all-together phase, 0 to 3600")
        self.env = {**os.environ, **(read_env_file(args.env_file) if args.env_file else {})}
        self.locustfiles = [Path(path).resolve() for path in args.locustfile or []]
        for path in self.locustfiles:
            if not path.is_file() or path.suffix != ".py":
                raise AuditError(f"-f {path}: give a Locust file (.py) with your user classes")

    # -- the whole audit
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.time()
        if self.args.setup:
            self.echo(f"setup: {self.args.setup}")
            self.headers = {
                **run_setup(self.args.setup, self.app_dir, self.env, self.out / "setup.log"),
                **self.headers,
            }
        with self._service() as (base, info):
            routes = self._routes(base, info)
            loaded = [route for route in routes if not route.skipped]
            if not loaded and not self.locustfiles:
                raise AuditError(
                    "no route could be loaded: " + "; ".join(f"{r.key}: {r.skipped}" for r in routes)
                    if routes
                    else "the schema lists no route to load"
                )
            raw, results = self._load(base, info, loaded)
        server_log = (
            (self.out / "server.log").read_text(errors="replace")
            if (self.out / "server.log").exists()
            else ""
        )
        report = self._report(routes, raw, results, blocked_places(server_log), started)
        (self.out / "report.json").write_text(json.dumps(report, indent=1))
        from asyncproof.loadtests import audit_report

        audit_report.write(report, raw, self.out)
        return report

    @contextmanager
    def _service(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The app's base URL and what the audit knows about it, for as long as the audit runs."""
        if self.args.url:
            base = self.args.url.rstrip("/")
            if not loopback(base):
                self.echo(f"note: {base} is not on this machine; the load goes there because --url names it")
            info = {
                "openapi_url": self.args.openapi_path,
                "health_path": self.args.health_path,
                "metrics_url": self.args.metrics_url or base + "/metrics",
            }
            yield base, info
            return
        port, metrics_port = free_port(), free_port()
        info_path = self.out / "app-info.json"
        info_path.unlink(missing_ok=True)
        env = {
            **self.env,
            "ASYNCPROOF_AUDIT_TARGET": self.args.target,
            "ASYNCPROOF_AUDIT_INFO": str(info_path),
            "ASYNCPROOF_AUDIT_METRICS_PORT": str(metrics_port),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the server's own, fresh (asyncproof.monitoring.gunicorn)
        command = [
            str(BIN / "gunicorn"),
            *("-c", "python:asyncproof.monitoring.gunicorn"),
            *("--bind", f"127.0.0.1:{port}", "--workers", str(self.args.workers)),
            *("--worker-class", "uvicorn_worker.UvicornWorker", "--chdir", str(self.app_dir)),
            *("--timeout", str(self.args.worker_timeout), "--graceful-timeout", "5"),
            "asyncproof.loadtests.audit_target:app",
        ]
        base = f"http://127.0.0.1:{port}"
        self.echo(
            f"serving {self.args.target} from {self.app_dir}: {self.args.workers} Gunicorn workers on {base}"
        )
        log = self.out / "server.log"
        with running(command, env=env, cwd=self.app_dir, log=log, grace=5) as server:
            info = self._wait_for_info(info_path, server, log)
            if info["instrumented_by"] == "audit":
                info["metrics_url"] = f"http://127.0.0.1:{metrics_port}{info['metrics_path']}"
            elif info.get("metrics_port"):
                info["metrics_url"] = f"http://127.0.0.1:{info['metrics_port']}{info['metrics_path']}"
            else:
                info["metrics_url"] = base + info["metrics_path"]
            try:
                wait_for(base + info["health_path"] + "/ready", deadline=60, process=server)
                wait_for(info["metrics_url"], deadline=30, process=server)
            except (RuntimeError, TimeoutError) as error:
                raise AuditError(f"the app did not start: {error}\n{_tail(log)}") from error
            yield base, info

    def _wait_for_info(self, path: Path, server: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists():
                info: dict[str, Any] = json.loads(path.read_text())
                if "error" in info:
                    raise AuditError(info["error"])
                return info
            if server.poll() is not None:
                raise AuditError(
                    f"the app did not start (Gunicorn exited {server.returncode}):\n{_tail(log)}"
                )
            time.sleep(0.1)
        raise AuditError(f"the app was not imported within 60 s:\n{_tail(log)}")

    def _routes(self, base: str, info: dict[str, Any]) -> list[openapi_cases.Route]:
        from hypothesis.configuration import set_hypothesis_home_dir

        set_hypothesis_home_dir(self.out / ".hypothesis")  # its caches, not in the project's folder
        if not info.get("openapi_url") and self.locustfiles:
            self.echo("the app serves no OpenAPI schema: only your users (-f) load it")
            return []
        if not info.get("openapi_url"):
            raise AuditError(
                "the app serves no OpenAPI schema (openapi_url=None): the audit reads its routes there"
            )
        url = base + info["openapi_url"]
        try:
            schema = openapi_cases.load_schema(url)
        except Exception as error:
            raise AuditError(f"cannot read the OpenAPI schema at {url}: {error}") from error
        health = info["health_path"]
        own = {health, f"{health}/live", f"{health}/ready", info.get("metrics_path", "/metrics")}
        routes = openapi_cases.routes_of(schema, own, self.profile.requests_per_route)
        openapi_cases.select(routes, self.args.only or [], self.args.exclude or [])
        chosen = sum(1 for route in routes if not route.skipped)
        self.echo(f"{len(routes)} routes in the schema, {chosen} to try; trying their requests once each")
        send = openapi_cases.sender(base, self.headers, self.profile.timeout)

        def regenerate(route: openapi_cases.Route) -> list[dict[str, Any]]:
            try:
                return openapi_cases.generated_requests(route, self.profile.requests_per_route)
            except Exception:
                return []

        openapi_cases.try_requests(routes, send, regenerate)
        for route in routes:
            if route.skipped and route.skipped not in ("not chosen by --only", "left out by --exclude"):
                self.echo(f"  skipped {route.key}: {route.skipped}")
        return routes

    def _load(
        self, base: str, info: dict[str, Any], routes: list[openapi_cases.Route]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        together = self.args.duration if self.args.duration is not None else self.profile.together_seconds
        keys = [route.key for route in routes]
        plan = phases(keys, self.profile, together, locustfile=bool(self.locustfiles))
        seconds = longest_run(plan, self.profile)
        document = {
            "phases": plan,
            "settle_seconds": self.profile.settle_seconds,
            "settle_max_seconds": self.profile.settle_max_seconds,
            "phases_path": str(self.out / "phases.json"),
            "routes": {
                route.key: [
                    {**sent, "headers": openapi_cases.merge_headers(sent.get("headers", {}), self.headers)}
                    for sent in route.requests
                ]
                for route in routes
            },
            "health_path": info["health_path"],
            "rate_per_user": self.args.rate / self.args.users if self.args.rate else 0,
            "timeout": self.profile.timeout,
            "users": self.args.users,
            "spawn_rate": max(self.args.users / 1.5, 1.0),
        }
        plan_path = self.out / "plan.json"
        plan_path.write_text(json.dumps(document, indent=1))
        theirs = (
            f", your users ({', '.join(p.name for p in self.locustfiles)}) alone" if self.locustfiles else ""
        )
        self.echo(
            f"load: {len(keys)} routes alone for {self.profile.phase_seconds:g} s each{theirs}, "
            f"then together for {together:g} s; {self.args.users} users, "
            f"{self.args.rate or 'unlimited'} requests/s; {seconds:.0f} s at most"
        )
        command = [
            str(BIN / "locust"),
            # the load shape in LOCUSTFILE says which users run when, and ends the run
            *("-f", ",".join(str(path) for path in [LOCUSTFILE, *self.locustfiles])),
            *("--headless", "--only-summary", "-H", base),
            *("--scrape-url", info["metrics_url"], "--audit-plan", str(plan_path)),
            *("--results-json", str(self.out / "results.json"), "--raw-json", str(self.out / "raw.json")),
            *("--csv", str(self.out / "locust"), "--html", str(self.out / "locust.html")),
            *("--stop-timeout", "1"),
        ]
        code = run_bounded(command, log=self.out / "locust.log", seconds=seconds + 60)
        raw_path, results_path = self.out / "raw.json", self.out / "results.json"
        if not raw_path.exists() or not results_path.exists() or not (self.out / "phases.json").exists():
            raise AuditError(f"the load generator failed (exit {code}):\n{_tail(self.out / 'locust.log')}")
        return json.loads(raw_path.read_text()), json.loads(results_path.read_text())

    def _report(
        self,
        routes: list[openapi_cases.Route],
        raw: dict[str, Any],
        results: dict[str, Any],
        places: dict[str, dict[str, int]],
        started: float,
    ) -> dict[str, Any]:
        owned = windows(json.loads((self.out / "phases.json").read_text()))
        outcomes = gates.evaluate(self.gates.conditions, results) if self.gates.conditions else []
        rows = []
        for route in routes:
            row: dict[str, Any] = {
                "route": route.key,
                "tags": list(route.tags),
                "requests_from": route.source or None,
                "answers": route.answers,
            }
            if route.skipped:
                rows.append({**row, "verdict": verdicts.SKIPPED, "skipped": route.skipped, "allowed": True})
                continue
            if route.key not in owned:  # the run ended before its phase (see locust.log)
                rows.append(
                    {
                        **row,
                        "verdict": verdicts.ERRORS,
                        "skipped": None,
                        "allowed": False,
                        "gates_failed": [],
                        "not_run": "the load ended before its phase",
                    }
                )
                continue
            start, end = owned[route.key]
            keys, templates = [route.key], [route.path]
            alone = window_figures(raw, keys, raw["started"] + start, raw["started"] + end, routes=templates)
            if "together" in owned:
                t_start, t_end = owned["together"]
                with_others = window_figures(
                    raw, keys, raw["started"] + t_start, raw["started"] + t_end, routes=templates
                )
            else:
                with_others = {}
            # "*" is every endpoint: judged on this route's own figures here, not on the worst route's
            mine = [
                dataclasses.replace(c, target=route.key) if c.target == "*" else c
                for c in self.gates.conditions
                if gate_targets(c, route)
            ]
            failed_gates = [o.as_dict() for o in gates.evaluate(mine, results) if not o.passed]
            slow = any(o["condition"].startswith("p99") for o in failed_gates)
            verdict = verdicts.judge_route(
                would_restart=alone["would_restart"],
                threadpool_waiting_max=alone["threadpool_waiting_max"],
                fail_ratio=alone["fail_ratio"],
                stalls=alone["stalls"],
                slow=slow,
            )
            route_places = places.get(route.key, {})
            rows.append(
                {
                    **row,
                    **alone,
                    "together_p99_ms": with_others.get("p99_ms"),
                    "together_requests": with_others.get("requests"),
                    "together_fail_ratio": with_others.get("fail_ratio"),
                    "blocked_at": max(route_places, key=lambda p: route_places[p]) if route_places else None,
                    "blocked_places": route_places,
                    "phase": [start, end],
                    "verdict": verdict,
                    "allowed": self.gates.allows(route, verdict),
                    "gates_failed": failed_gates,
                }
            )
        if LOCUSTFILE_PHASE in owned:
            rows.append(self._locustfile_row(raw, owned[LOCUSTFILE_PHASE], places))
        rows.sort(key=lambda r: (verdicts.severity(r["verdict"]), r["route"]))
        together = None
        if "together" in owned:
            t_start, t_end = owned["together"]
            liveness = raw["samples"].get("PROBE liveness", [])
            together = {
                "seconds": round(t_end - t_start, 1),
                "probe_failures": sum(
                    1
                    for _, _, ok in _between(
                        liveness, raw["started"] + t_start, raw["started"] + t_end, by_start=True
                    )
                    if not ok
                ),
                "would_restart": sum(
                    1
                    for when in probe_events(liveness, PROBE_THRESHOLD, restarts=True)
                    if raw["started"] + t_start <= when < raw["started"] + t_end
                ),
            }
        return {
            "target": self.args.target or self.args.url,
            "profile": self.profile.name,
            "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 1),
            "machine": machine(),
            "workers": None if self.args.url else self.args.workers,
            "users": self.args.users,
            "rate": self.args.rate,
            "routes": rows,
            "together": together,
            "server": results.get("server", {}),
            "probe": results.get("probe", {}),
            "gates": [outcome.as_dict() for outcome in outcomes],
        }

    def _locustfile_row(
        self, raw: dict[str, Any], window: tuple[float, float], places: dict[str, dict[str, int]]
    ) -> dict[str, Any]:
        """Your users' phase as one row: every request they made, every route the server saw stall."""
        start, end = window
        keys = [key for key in raw["samples"] if not key.startswith(("PROBE ", "TASK "))]
        figures = window_figures(raw, keys, raw["started"] + start, raw["started"] + end)
        their_places: dict[str, int] = {}
        for key, counts in places.items():
            if key.partition(" ")[2] in figures["stalled_routes"]:
                for place, count in counts.items():
                    their_places[place] = their_places.get(place, 0) + count
        name = f"{LOCUSTFILE_PHASE} ({', '.join(path.name for path in self.locustfiles)})"
        verdict = verdicts.judge_route(
            would_restart=figures["would_restart"],
            threadpool_waiting_max=figures["threadpool_waiting_max"],
            fail_ratio=figures["fail_ratio"],
            stalls=figures["stalls"],
            slow=False,
        )
        return {
            "route": name,
            "tags": [],
            "requests_from": "locustfile",
            "sample_keys": sorted(
                k for k in keys if _between(raw["samples"][k], raw["started"] + start, raw["started"] + end)
            ),
            **figures,
            "blocked_at": max(their_places, key=lambda p: their_places[p]) if their_places else None,
            "blocked_places": their_places,
            "phase": [start, end],
            "verdict": verdict,
            "allowed": self.gates.allows(openapi_cases.Route("", name), verdict),
            "gates_failed": [],
        }


def exit_code(report: dict[str, Any]) -> int:
    if any(not row["allowed"] for row in report["routes"]):
        return VERDICT_NOT_ALLOWED
    if any(not outcome["passed"] for outcome in report["gates"]):
        return gates.GATE_FAILED_EXIT_CODE
    return 0


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def audit(args: Any) -> int:
    from asyncproof.loadtests import audit_report

    try:
        with _terminate_as_interrupt():
            auditor = Auditor(args, echo=lambda line: print(line, flush=True))
            report = auditor.run()
    except AuditError as error:
        print(f"asyncproof audit: {error}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("asyncproof audit: interrupted; every process it started is stopped", file=sys.stderr)
        return INTERRUPTED
    print()
    print(audit_report.table(report))
    if report["gates"]:
        print()
        print(gates.format_outcomes([_outcome(o) for o in report["gates"]]))
    out = Path(args.out)
    print()
    print(f"report: {out / 'report.html'} (figures: {out / 'report.json'}, JUnit: {out / 'junit.xml'})")
    code = exit_code(report)
    not_allowed = [row["route"] for row in report["routes"] if not row["allowed"]]
    if not_allowed:
        print(f"verdicts the gates do not allow: {', '.join(not_allowed)}")
    return code


def _outcome(data: dict[str, Any]) -> gates.Outcome:
    condition = gates.parse_condition(data["target"], data["condition"])
    return gates.Outcome(condition, data["observed"], data["passed"])
