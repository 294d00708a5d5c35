"""``asyncproof prove``: run every execution style of the reference app under load and judge it.

For each scenario: start the app (fresh state, its own port), run Locust (a process of its own) with
the probes and the style's users for a bounded time, scrape the server during the run, stop
everything, then compare the OBSERVED verdict with the EXPECTED one. A mismatch exits 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from asyncproof.loadtests import report as reports
from asyncproof.loadtests import results as R  # the figures' names, as contract is for metrics
from asyncproof.loadtests.processes import (
    BIN,
    children,
    free_port,
    port_open,
    run_bounded,
    running,
    wait_for,
)
from asyncproof.loadtests.verdicts import (
    ERRORS,
    HEALTHY,
    LOSES_POLLS,
    QUEUES,
    RESTARTS,
    SKIPPED,
    WORKER_KILLED,
    judge,
)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
REDIS = ("127.0.0.1", 6379)
BROKER_URL = "redis://127.0.0.1:6379/15"  # the queue scenario's broker; its queue is emptied first


@dataclass(frozen=True)
class Profile:
    name: str
    run_seconds: int
    warm_data_mb: int


PROFILES = {
    "quick": Profile("quick", run_seconds=6, warm_data_mb=48),
    "default": Profile("default", run_seconds=25, warm_data_mb=128),
}


@dataclass(frozen=True)
class Scenario:
    name: str
    shows: str
    users: tuple[str, ...]  # Locust user classes besides the two probes
    user_count: int  # style users (the probes come on top)
    expected: str
    submit: str  # the request whose latency is the style's "submit" latency
    style: str = ""  # task style whose completion is measured
    work_kind: str = "io"
    work_ms: int = 200
    server: str = "gunicorn"
    workers: int = 2
    settings: dict[str, str] = field(default_factory=dict)
    # Users start at this rate (per second; 0: all at once): blocking styles need the first connections
    # spread over the workers, or the worker that accepts them first hoards them all.
    spawn_rate: float = 0
    min_seconds: int = 0  # the run lasts at least this long, whatever the profile

    @property
    def needs_redis(self) -> bool:
        """The queue style: it runs a Celery worker on a Redis broker."""
        return "ASYNCPROOF_BROKER_URL" in self.settings


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "async-blocking",
        "time.sleep inside async def: the event loop stalls, probes time out; Gunicorn kills the worker "
        "after its timeout (lowered to 3 s here so a short run shows it)",
        ("AsyncBlockingUser",),
        10,
        f"{RESTARTS}, {WORKER_KILLED}",
        "POST /work/async-blocking",
        work_ms=4000,
        spawn_rate=4,
        min_seconds=10,
        settings={"ASYNCPROOF_WORKER_TIMEOUT": "3"},
    ),
    Scenario(
        "async-blocking-uvicorn",
        "the same under uvicorn --workers: the blocked worker is not replaced, it just stops answering",
        ("AsyncBlockingUser",),
        10,
        RESTARTS,
        "POST /work/async-blocking",
        work_ms=4000,
        spawn_rate=4,
        min_seconds=10,
        server="uvicorn",
    ),
    Scenario(
        "sync",
        "blocking work in a def endpoint, below the 40-token AnyIO threadpool: fine",
        ("SyncUser",),
        10,
        HEALTHY,
        "POST /work/sync",
        work_ms=500,
        workers=1,
    ),
    Scenario(
        "sync-saturated",
        "the same above 40 concurrent requests per worker: requests queue for a token, latency grows, "
        "probes still pass (they are async)",
        ("SyncUser",),
        60,
        QUEUES,
        "POST /work/sync",
        work_ms=1000,
        workers=1,
    ),
    Scenario(
        "async",
        "awaited non-blocking I/O: flat",
        ("AsyncUser",),
        20,
        HEALTHY,
        "POST /work/async",
        work_ms=500,
    ),
    Scenario(
        "background-tasks",
        "202 at once, the work runs in the same worker after the response (and is lost if it stops)",
        ("BackgroundTasksUser",),
        4,
        HEALTHY,
        "POST /work/background-tasks",
        style="background-tasks",
        work_ms=300,
    ),
    Scenario(
        "executor-memory",
        "executor + a per-worker in-memory task dict, 3 workers: polls that reach another worker get 404",
        ("ExecutorUser",),
        4,
        LOSES_POLLS,
        "POST /work/executor",
        style="executor",
        work_ms=300,
        workers=3,
        settings={"ASYNCPROOF_TASK_STORE": "memory"},
    ),
    Scenario(
        "executor-sqlite",
        "the same with the SQLite task store shared by the workers: no 404",
        ("ExecutorUser",),
        4,
        HEALTHY,
        "POST /work/executor",
        style="executor",
        work_ms=300,
        workers=3,
        settings={"ASYNCPROOF_TASK_STORE": "sqlite"},
    ),
    Scenario(
        "process",
        "CPU work in a process pool: the event loop stays free, probes pass",
        ("ProcessUser",),
        2,
        HEALTHY,
        "POST /work/process",
        style="process",
        work_kind="cpu",
        work_ms=300,
    ),
    Scenario(
        "data",
        "the data path: items created, read through the cache (single-flight), listed from SQLite",
        ("DataUser",),
        10,
        HEALTHY,
        "GET /items/{id}",
    ),
    Scenario(
        "queue",
        "a Celery task through Redis, run by a separate worker process",
        ("QueueUser",),
        4,
        HEALTHY,
        "POST /work/queue",
        style="queue",
        work_ms=300,
        settings={"ASYNCPROOF_BROKER_URL": BROKER_URL},
    ),
)


def observe(results: dict[str, Any], scenario: Scenario, workers_replaced: int) -> str:
    """The verdict the run's figures give, in the same words as the expected ones."""
    probe = results.get("probe", {})
    server = results.get("server", {})
    task = results.get("tasks", {}).get(scenario.style, {})
    submit = results.get("endpoints", {}).get(scenario.submit, {})
    verdict = judge(
        would_restart=probe.get(R.WOULD_RESTART, 0),
        polls_404=task.get(R.POLLS_404, 0),
        threadpool_waiting_max=server.get(R.THREADPOOL_WAITING_MAX),
        tasks_failed=task.get(R.UNFINISHED, 0) + task.get(R.FAILED, 0),
        fail_ratio=submit.get(R.FAIL_RATIO),
    )
    if workers_replaced > 0:
        verdict += f", {WORKER_KILLED}"
    return verdict


# The stall watchdog's log lines (asyncproof.monitoring.stalls): each stall at a place the first
# time, then one line per interval for the stalls held back there ("over N more stalls ...").
_STALL_LINE = re.compile(
    r"event loop blocked [0-9.]+ s (?P<so_far>so far )?(?:in \S+ \S+|outside any request) "
    r"(?:at (?P<place>.+?)|(?P<outside>outside application code(?: \(\S+\))?))"
    r"(?: over (?P<more>\d+) more stalls? in the last [0-9.]+ s \([0-9.]+ s the longest\))?$"
)


def blocked_at(log: Path) -> str | None:
    """Where the server's code blocked its event loop most often during the run, as the stall
    watchdog names it (``asyncproof/app/work.py:88 in run_inline (time.sleep)``); ``None`` when it
    logged no stall."""
    counts: dict[str, int] = {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        match = _STALL_LINE.search(line)
        if match is None or match.group("so_far"):  # an ongoing stall is logged again once it ends
            continue
        place = match.group("place") or match.group("outside")
        counts[place] = counts.get(place, 0) + int(match.group("more") or 1)
    return max(counts, key=lambda place: counts[place]) if counts else None


def row(scenario: Scenario, results: dict[str, Any], workers_replaced: int) -> dict[str, Any]:
    """The verdict table's figures for one scenario."""
    submit = results.get("endpoints", {}).get(scenario.submit, {})
    liveness = results.get("probes", {}).get(R.LIVENESS, {})
    probe = results.get("probe", {})
    task = results.get("tasks", {}).get(scenario.style, {})
    server = results.get("server", {})
    lag = server.get(R.LOOP_LAG_P99)
    lag_max = server.get(R.LOOP_LAG_MAX)
    return {
        "scenario": scenario.name,
        "submit_p50_ms": submit.get(R.P50),
        "submit_p99_ms": submit.get(R.P99),
        "probe_p99_ms": liveness.get(R.P99),
        "probe_failures": probe.get(R.FAILURES, 0),
        "would_restart": probe.get(R.WOULD_RESTART, 0),
        "loop_lag_p99_s": None if lag is None else round(lag, 4),
        # the longest stall a scrape saw, a blocked worker's included (it cannot report it itself)
        "loop_lag_max_s": None if lag_max is None else round(lag_max, 3),
        "threadpool_waiting_max": server.get(R.THREADPOOL_WAITING_MAX),
        "stalls": server.get(R.STALLS),
        "task_p95_s": task.get(R.COMPLETION_P95),
        "polls_404": task.get(R.POLLS_404, 0) if scenario.style else None,
        "unfinished": task.get(R.UNFINISHED, 0) if scenario.style else None,
        "throughput_rps": submit.get(R.RPS),
        "workers_replaced": workers_replaced,
    }


class Prover:
    def __init__(
        self, profile: Profile, out: Path, only: list[str], echo: Callable[[str], None] = print
    ) -> None:
        self.profile = profile
        self.out = out
        self.only = only
        self.echo = echo

    def scenarios(self) -> list[Scenario]:
        return [s for s in SCENARIOS if not self.only or s.name in self.only]

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        chosen = self.scenarios()
        started = time.time()
        rows = []
        for index, scenario in enumerate(chosen, 1):
            self.echo(f"[{index}/{len(chosen)}] {scenario.name}: {scenario.shows}")
            rows.append(self.run_scenario(scenario))
            last = rows[-1]
            mark = "ok" if last["match"] else ("skipped" if last["observed"] == SKIPPED else "MISMATCH")
            self.echo(f"        expected {last['expected']!r}, observed {last['observed']!r}: {mark}")
        memory = None
        if not self.only or "memory" in self.only:
            self.echo(
                f"[memory] {self.profile.warm_data_mb} MB of warm data, 2 workers, with and without preload"
            )
            memory = self.run_memory()
            self.echo(f"        expected {memory['expected']!r}, observed {memory['observed']!r}")
        report = {
            "profile": self.profile.name,
            "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 1),
            "machine": machine(),
            "scenarios": rows,
            "memory": memory,
        }
        (self.out / "report.json").write_text(json.dumps(report, indent=1))
        reports.write(report, self.out)
        return report

    def run_scenario(self, scenario: Scenario) -> dict[str, Any]:
        folder = self.out / scenario.name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        base = {
            "scenario": scenario.name,
            "shows": scenario.shows,
            "submit": scenario.submit,
            "expected": scenario.expected,
        }
        if scenario.needs_redis and not port_open(*REDIS):
            reason = "Redis is not reachable at 127.0.0.1:6379"
            return {**base, "observed": SKIPPED, "match": False, "skipped": reason}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # Scrapes go to the server's exposition process, outside the workers: they cost the workers
        # nothing and answer while every worker is blocked (the async-blocking scenarios).
        metrics_port = free_port()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        env = {
            "ASYNCPROOF_STATE_DIR": str(folder / "state"),
            "ASYNCPROOF_METRICS_PORT": str(metrics_port),
            **scenario.settings,
        }
        serve = [str(BIN / "asyncproof"), "serve", "--server", scenario.server]
        serve += ["--workers", str(scenario.workers), "--port", str(port)]
        with (
            self._worker(scenario, env, folder),
            running(serve, env=env, log=folder / "server.log", grace=3) as server,
        ):
            wait_for(f"{url}/health/ready", deadline=60, process=server)
            wait_for(metrics_url, deadline=30, process=server)
            before = set(children(server.pid))
            code = self._locust(scenario, url, folder, metrics_url)
            after = set(children(server.pid))
        results = (
            json.loads((folder / "results.json").read_text()) if (folder / "results.json").exists() else {}
        )
        replaced = len(before - after)
        observed = observe(results, scenario, replaced) if results else f"{ERRORS} (locust exited {code})"
        figures = row(scenario, results, replaced)
        # the line of code its stall watchdog saw blocking the loop ("none": the loop never stalled)
        figures["blocked_at"] = blocked_at(folder / "server.log") or "none"
        return {**base, **figures, "observed": observed, "match": observed == scenario.expected}

    def _worker(self, scenario: Scenario, env: dict[str, str], folder: Path) -> Any:
        """The Celery worker of the queue scenario (nothing for the others)."""
        if not scenario.needs_redis:
            return contextlib.nullcontext()
        import redis

        from asyncproof.app.queue import QUEUE

        # Tasks an earlier, interrupted run left in the queue point at its own (gone) task store.
        redis.Redis.from_url(BROKER_URL).delete(QUEUE)
        return running([str(BIN / "asyncproof"), "worker"], env=env, log=folder / "worker.log", grace=3)

    def _locust(self, scenario: Scenario, url: str, folder: Path, metrics_url: str) -> int:
        seconds = max(self.profile.run_seconds, scenario.min_seconds)
        users = scenario.user_count + 2  # and the two probes
        rate = scenario.spawn_rate or users
        command = [
            str(BIN / "locust"),
            *("-f", str(LOCUSTFILE), "--headless", "--only-summary", "-H", url),
            *("--scrape-url", metrics_url),
            *("-u", str(users), "-r", str(rate), "-t", f"{seconds}s"),
            *("--work-kind", scenario.work_kind, "--work-ms", str(scenario.work_ms)),
            *("--results-json", str(folder / "results.json")),
            *("--csv", str(folder / "locust"), "--html", str(folder / "locust.html")),
            *("--stop-timeout", "1"),
            "LivenessProbe",
            "ReadinessProbe",
            *scenario.users,
        ]
        return run_bounded(command, log=folder / "locust.log", seconds=seconds + 60)

    def run_memory(self) -> dict[str, Any]:
        """Resident and unique memory per worker with the warm data set, without and with preload."""
        figures = {}
        for preload in (False, True):
            name = "preload" if preload else "no-preload"
            folder = self.out / f"memory-{name}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            port = free_port()
            env = {
                "ASYNCPROOF_STATE_DIR": str(folder / "state"),
                "ASYNCPROOF_WARM_DATA_MB": str(self.profile.warm_data_mb),
            }
            command = [str(BIN / "asyncproof"), "serve", "--workers", "2", "--port", str(port)]
            if preload:
                command.append("--preload")
            with running(command, env=env, log=folder / "server.log", grace=3) as server:
                wait_for(f"http://127.0.0.1:{port}/health/ready", deadline=120, process=server)
                for _ in range(20):  # every worker serves a few requests, as in real life
                    httpx.get(f"http://127.0.0.1:{port}/info", headers={"Connection": "close"}, timeout=5)
                time.sleep(1)
                figures[name] = worker_memory(children(server.pid))
        shared = figures["preload"]["uss_mb_per_worker"] < 0.5 * figures["no-preload"]["uss_mb_per_worker"]
        return {
            "warm_data_mb": self.profile.warm_data_mb,
            "workers": 2,
            **figures,
            "expected": "preload shares the warm data",
            "observed": "preload shares the warm data" if shared else "no sharing",
            "match": shared,
        }


def worker_memory(pids: list[int]) -> dict[str, float]:
    """RSS counts shared pages in every worker; USS is what each worker alone holds, PSS splits the shared."""
    infos = [psutil.Process(pid).memory_full_info() for pid in pids]
    count = len(infos) or 1

    def mb(value: float) -> float:
        return round(value / 2**20, 1)

    return {
        "workers": len(infos),
        "rss_mb_per_worker": mb(sum(i.rss for i in infos) / count),
        "rss_mb_total": mb(sum(i.rss for i in infos)),
        "uss_mb_per_worker": mb(sum(i.uss for i in infos) / count),
        "pss_mb_total": mb(sum(getattr(i, "pss", i.rss) for i in infos)),
    }


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def mismatches(report: dict[str, Any]) -> list[str]:
    found = [s["scenario"] for s in report["scenarios"] if not s["match"] and not s.get("skipped")]
    if report.get("memory") and not report["memory"]["match"]:
        found.append("memory")
    return found


def prove(args: Any) -> int:
    known = {s.name for s in SCENARIOS} | {"memory"}
    unknown = [name for name in args.only if name not in known]
    if unknown:
        print(
            f"unknown scenario {', '.join(unknown)}; choose from {', '.join(sorted(known))}", file=sys.stderr
        )
        return 2
    profile = PROFILES["quick" if args.quick else "default"]
    out = Path(args.out)
    prover = Prover(profile, out, args.only, echo=lambda line: print(line, flush=True))
    report = prover.run()
    print()
    print(reports.table(report))
    wrong = mismatches(report)
    print()
    print(f"report: {out / 'report.html'} (figures: {out / 'report.json'})")
    if wrong:
        print(f"observed differs from expected for: {', '.join(wrong)}")
        return 1
    print(f"every observed verdict matches the expected one ({report['seconds']} s)")
    return 0
