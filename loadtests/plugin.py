"""The Locust side of asyncproof: raw timings, probe and task counters, server scrapes, gates, exporter.

Imported by ``loadtests/locustfile.py`` only (importing Locust patches the standard library with
gevent). In a distributed run every worker ships its raw samples and counters to the master as custom
messages (every two seconds and once more when it stops), and the master alone scrapes the server,
evaluates the gates and writes the results, so the same scenarios run unchanged under
``--processes`` or ``--master``/``--worker``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from asyncproof.loadtests import gates, stats
from asyncproof.loadtests import results as run_results
from asyncproof.monitoring import contract

log = logging.getLogger("asyncproof")

SAMPLES_MESSAGE = "asyncproof_samples"
SHIP_INTERVAL = 2.0
PROBE_TYPE = run_results.PROBE_TYPE
TASK_TYPE = run_results.TASK_TYPE


class Collector:
    """Raw samples per request key ("POST /work/sync", "PROBE liveness", "TASK executor") and counters.

    On a worker it holds what has not been shipped yet; on the master (or a single process) everything.
    """

    def __init__(self) -> None:
        self.samples: dict[str, list[stats.Sample]] = defaultdict(list)
        self.counters: dict[str, float] = defaultdict(float)

    def add(self, key: str, sample: stats.Sample) -> None:
        self.samples[key].append(sample)

    def count(self, name: str, amount: float = 1) -> None:
        self.counters[name] += amount

    def take(self) -> dict[str, Any]:
        """What a worker ships: its new samples and counters, which it then forgets."""
        data = {"samples": dict(self.samples), "counters": dict(self.counters)}
        self.samples = defaultdict(list)
        self.counters = defaultdict(float)
        return data

    def merge(self, data: dict[str, Any]) -> None:
        for key, samples in data.get("samples", {}).items():
            self.samples[key].extend(tuple(sample) for sample in samples)
        for name, amount in data.get("counters", {}).items():
            self.counters[name] += amount


collector = Collector()


class ServerScraper:
    """Scrapes the app's ``/metrics`` every ``interval`` while the test runs (master or single process)."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.scrapes: list[stats.Scrape] = []
        self.failed = 0
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True)
            self._greenlet = None

    def _run(self) -> None:
        next_at = time.monotonic()
        while True:
            self.scrape_once()
            next_at += self.interval
            gevent.sleep(max(0.0, next_at - time.monotonic()))

    def scrape_once(self) -> None:
        try:
            # A worker whose loop is blocked cannot answer: the scrape gives up as a probe would.
            response = requests.get(self.url, timeout=2, headers={"Connection": "close"})
            response.raise_for_status()
            self.scrapes.append(stats.parse_scrape(response.text, time.time()))
        except (requests.RequestException, ValueError):
            self.failed += 1


class Run:
    """The master's (or single process's) view of one run."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        options = environment.parsed_options
        self.started = time.time()
        self.ended: float | None = None
        self.scraper: ServerScraper | None = None
        url = getattr(options, "scrape_url", "") if options else ""
        if url != "none" and environment.host:
            url = url or environment.host.rstrip("/") + "/metrics"
            self.scraper = ServerScraper(url, getattr(options, "scrape_interval", 1.0))
        self.users: list[tuple[float, int]] = []  # (time, users running), once a second
        self._users_greenlet: gevent.Greenlet | None = None
        self.conditions: list[gates.Condition] = []
        gates_file = getattr(options, "gates", "") if options else ""
        if gates_file:
            self.conditions = gates.load_gates(gates_file)

    def start(self) -> None:
        self.started = time.time()
        if self.scraper is not None:
            self.scraper.start()
        self._users_greenlet = gevent.spawn(self._count_users)

    def stop(self) -> None:
        self.ended = time.time()
        if self._users_greenlet is not None:
            self._users_greenlet.kill(block=True)
        if self.scraper is not None:
            self.scraper.stop()
            self.scraper.scrape_once()  # the last word after the load stopped

    def _count_users(self) -> None:
        runner = self.environment.runner
        while runner is not None:
            self.users.append((time.time(), runner.user_count))
            gevent.sleep(1.0)

    def results(self) -> run_results.Results:
        return run_results.compute(
            collector.samples,
            collector.counters,
            self.scraper.scrapes if self.scraper is not None else None,
            scrapes_failed=self.scraper.failed if self.scraper is not None else 0,
            users=self.users,
            started=self.started,
            ended=self.ended or time.time(),
            host=self.environment.host,
        )

    def raw(self) -> dict[str, Any]:
        """Every sample and scrape as taken: for figures over parts of the run (``asyncproof audit``)."""
        return {
            "started": self.started,
            "ended": self.ended or time.time(),
            "samples": {key: list(samples) for key, samples in collector.samples.items()},
            "counters": dict(collector.counters),
            "scrapes": [stats.scrape_to_dict(scrape) for scrape in self.scraper.scrapes]
            if self.scraper
            else [],
            "scrapes_failed": self.scraper.failed if self.scraper else 0,
        }


class ClientMetrics:
    """Locust's own figures as Prometheus metrics (names from the contract), read at each scrape."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment

    def collect(self) -> Iterator[Any]:
        runner = self.environment.runner
        users = GaugeMetricFamily(contract.LOCUST_USERS.exposed_name, contract.LOCUST_USERS.help)
        users.add_metric([], runner.user_count if runner else 0)
        yield users
        requests_total = CounterMetricFamily(
            contract.LOCUST_REQUESTS.name,
            contract.LOCUST_REQUESTS.help,
            labels=contract.LOCUST_REQUESTS.labels,
        )
        failures = CounterMetricFamily(
            contract.LOCUST_REQUEST_FAILURES.name,
            contract.LOCUST_REQUEST_FAILURES.help,
            labels=contract.LOCUST_REQUEST_FAILURES.labels,
        )
        duration = HistogramMetricFamily(
            contract.LOCUST_RESPONSE_TIME.name,
            contract.LOCUST_RESPONSE_TIME.help,
            labels=contract.LOCUST_RESPONSE_TIME.labels,
        )
        bounds = contract.LOCUST_RESPONSE_TIME.buckets
        for key, samples in sorted(collector.samples.items()):
            method, _, name = key.partition(" ")
            seconds = [ms / 1000 for _, ms, _ in samples]
            requests_total.add_metric([method, name], len(samples))
            failures.add_metric([method, name], sum(1 for _, _, ok in samples if not ok))
            cumulative = [(str(bound), sum(1 for value in seconds if value <= bound)) for bound in bounds]
            duration.add_metric([method, name], [*cumulative, ("+Inf", len(seconds))], sum(seconds))
        yield requests_total
        yield failures
        yield duration


# --- Locust event listeners ---------------------------------------------------------------------

_run: Run | None = None


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("asyncproof")
    group.add_argument("--gates", default="", help="SLO gates file (YAML/JSON); a failed gate exits 3")
    group.add_argument("--results-json", default="", help="write every figure of the run to this file")
    group.add_argument(
        "--raw-json", default="", help="write the raw samples and server scrapes of the run to this file"
    )
    group.add_argument(
        "--scrape-url",
        default="",
        help="the app's /metrics: its metrics port's (http://HOST:PORT/metrics) keeps answering while "
        "every worker is blocked (default: HOST/metrics; 'none': off)",
    )
    group.add_argument("--scrape-interval", type=float, default=1.0)
    group.add_argument(
        "--client-metrics-port", type=int, default=0, help="serve Locust's figures for Prometheus"
    )
    group.add_argument("--probe-period", type=float, default=1.0, help="seconds between probes (kubelet: 10)")
    group.add_argument("--probe-timeout", type=float, default=1.0)
    group.add_argument("--probe-threshold", type=int, default=3, help="consecutive failures that act")
    group.add_argument("--work-kind", choices=("io", "cpu"), default="io")
    group.add_argument("--work-ms", type=int, default=100, help="duration_ms of each piece of work")
    group.add_argument("--poll-interval", type=float, default=0.2)
    group.add_argument(
        "--task-deadline", type=float, default=30.0, help="a task not done by then is unfinished"
    )
    group.add_argument("--step-users", type=int, default=5, help="step shape: users added per step")
    group.add_argument("--step-seconds", type=float, default=10.0, help="step shape: seconds per step")


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    global _run
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        _start_shipping(environment)
        return
    try:
        _run = Run(environment)
    except gates.GateError as error:
        log.error("%s", error)
        raise SystemExit(2) from error
    if isinstance(runner, MasterRunner):
        runner.register_message(SAMPLES_MESSAGE, lambda environment, msg, **_: collector.merge(msg.data))
    port = getattr(environment.parsed_options, "client_metrics_port", 0) if environment.parsed_options else 0
    if port:
        registry = CollectorRegistry()
        registry.register(ClientMetrics(environment))
        start_http_server(port, addr="127.0.0.1", registry=registry)
        log.info("client-side metrics on http://127.0.0.1:%d/metrics", port)


def _start_shipping(environment: Environment) -> None:
    def ship() -> None:
        data = collector.take()
        if data["samples"] or data["counters"]:
            environment.runner.send_message(SAMPLES_MESSAGE, data)  # type: ignore[union-attr]

    def loop() -> None:
        while True:
            gevent.sleep(SHIP_INTERVAL)
            ship()

    gevent.spawn(loop)
    environment.events.test_stop.add_listener(lambda **_: ship())


@events.request.add_listener
def _on_request(request_type: str, name: str, response_time: float, exception: Any, **_: Any) -> None:
    collector.add(f"{request_type} {name}", (time.time(), float(response_time), exception is None))


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    if _run is not None:
        _run.start()


@events.quitting.add_listener
def _quitting(environment: Environment, **_: Any) -> None:
    if _run is None:
        return
    _run.stop()
    results: dict[str, Any] = dict(_run.results())
    if _run.conditions:
        outcomes = gates.evaluate(_run.conditions, results)
        results["gates"] = [outcome.as_dict() for outcome in outcomes]
        print(gates.format_outcomes(outcomes), flush=True)
        passed = all(outcome.passed for outcome in outcomes)
        environment.process_exit_code = 0 if passed else gates.GATE_FAILED_EXIT_CODE
    path = getattr(environment.parsed_options, "results_json", "") if environment.parsed_options else ""
    if path:
        Path(path).write_text(json.dumps(results, indent=1, sort_keys=True))
    raw = getattr(environment.parsed_options, "raw_json", "") if environment.parsed_options else ""
    if raw:
        Path(raw).write_text(json.dumps(_run.raw()))
