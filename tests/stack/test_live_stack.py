"""The dashboards proven against real data: the stack runs natively on loopback — Nginx → Gunicorn (two
workers) → the reference app, a Celery worker on Redis, Locust with its client-side metrics, Prometheus
scraping every second with the alert rules loaded — a short load covers every style and the data
path, then every panel's query runs against that Prometheus and must return data."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from tests.nginx import nginx_command
from tests.processes import BIN, ROOT, free_port, running, wait_for
from tests.services import require_executable

pytestmark = pytest.mark.integration

BROKER_DB = 12  # a Redis database of its own, emptied before and after
LOAD_SECONDS = 20
USERS = [
    "LivenessProbe",
    "ReadinessProbe",
    "AsyncBlockingUser",
    "SyncUser",
    "AsyncUser",
    "BackgroundTasksUser",
    "ExecutorUser",
    "ProcessUser",
    "QueueUser",
    "DataUser",
]


@dataclass
class Stack:
    prometheus: str
    nginx: str
    load_started: float  # unix time


def wait_for_metrics(url: str, process: subprocess.Popen[bytes], log: Path, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    prometheus = require_executable("prometheus")
    tmp_path = tmp_path_factory.mktemp("stack")
    broker = redis_url.rsplit("/", 1)[0] + f"/{BROKER_DB}"
    redis.Redis.from_url(broker).flushdb()
    env = {
        "ASYNCPROOF_STATE_DIR": str(tmp_path / "state"),
        "ASYNCPROOF_BROKER_URL": broker,
        "ASYNCPROOF_TASK_RETRY_BACKOFF_SECONDS": "0.05",
    }
    app_port, worker_port, locust_port, prometheus_port = (free_port() for _ in range(4))
    (tmp_path / "nginx").mkdir()
    (tmp_path / "worker-metrics").mkdir()
    with ExitStack() as stack:
        app = stack.enter_context(
            running(
                [str(BIN / "asyncproof"), "serve", "--workers", "2", "--port", str(app_port)],
                env=env,
                log=tmp_path / "app.log",
            )
        )
        worker = stack.enter_context(
            running(
                [str(BIN / "asyncproof"), "worker", "--concurrency", "2"],
                env={
                    **env,
                    "ASYNCPROOF_WORKER_METRICS_PORT": str(worker_port),
                    "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "worker-metrics"),
                },
                log=tmp_path / "worker.log",
            )
        )
        wait_for(f"http://127.0.0.1:{app_port}/health/ready", process=app, deadline=60)
        wait_for_metrics(f"http://127.0.0.1:{worker_port}/metrics", worker, tmp_path / "worker.log")
        command, public, _ = nginx_command(tmp_path / "nginx", [f"127.0.0.1:{app_port}"])
        nginx = stack.enter_context(running(command, log=tmp_path / "nginx" / "out.log"))
        nginx_url = f"http://127.0.0.1:{public}"
        wait_for(f"{nginx_url}/health/live", process=nginx)

        # The shipped rules, and the shipped jobs pointed at loopback, scraped every second.
        config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(ROOT / "prometheus" / "rules" / "*.yml")]
        loopback = {"app": app_port, "worker": worker_port, "locust": locust_port}
        config["scrape_configs"] = [
            {**job, "static_configs": [{"targets": [f"127.0.0.1:{loopback[job['job_name']]}"]}]}
            for job in config["scrape_configs"]
            if job["job_name"] in loopback  # no Nginx exporter binary here
        ]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus_process = stack.enter_context(
            running(
                [
                    prometheus,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                log=tmp_path / "prometheus.log",
            )
        )
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        wait_for_metrics(f"{prometheus_url}/-/ready", prometheus_process, tmp_path / "prometheus.log")
        locust = [
            str(BIN / "locust"),
            *("-f", "loadtests/locustfile.py", "--headless", "--only-summary", "-H", nginx_url),
            *("-u", str(len(USERS) + 4), "-r", "20", "-t", f"{LOAD_SECONDS}s"),
            # work long enough that the async-blocking user's stalls pass the watchdog's 0.1 s
            *("--work-ms", "250", "--client-metrics-port", str(locust_port), "--scrape-url", "none"),
            *USERS,
        ]
        load_started = time.time()
        load = stack.enter_context(running(locust, cwd=ROOT, log=tmp_path / "locust.log"))
        assert load.wait(timeout=LOAD_SECONDS + 60) in (0, 1), (tmp_path / "locust.log").read_text()[-3000:]
        yield Stack(prometheus_url, nginx_url, load_started)
    redis.Redis.from_url(broker).flushdb()


def query(prometheus: str, expr: str) -> list[dict[str, object]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, object]] = body["data"]["result"]
    return result


def query_range(prometheus: str, expr: str, start: float) -> list[dict[str, object]]:
    """What a Grafana panel asks for: the expression evaluated over the dashboard's time range."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{time.time():.3f}", "step": "1s"}
    response = httpx.get(f"{prometheus}/api/v1/query_range", params=params, timeout=10)
    body = response.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, object]] = body["data"]["result"]
    return result


def panels() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in sorted((ROOT / "dashboards" / "json").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found.append((path.stem, panel["title"], [target["expr"] for target in panel["targets"]]))
    return found


def test_every_panel_shows_data_from_a_real_run(stack: Stack) -> None:
    # Asked over the run's time range, as Grafana does: an instant query "now" would miss the Locust
    # series, which Prometheus marks stale as soon as the stopped Locust stops answering its scrapes.
    variables = {"$__rate_interval": "15s", "$instance": ".*", "$route": ".*", "$backend": ".*"}
    empty = []
    for dashboard, title, expressions in panels():
        results = []
        for expr in expressions:
            for variable, value in variables.items():
                expr = expr.replace(variable, value)
            results.extend(query_range(stack.prometheus, expr, stack.load_started))
        if not results:
            empty.append(f"{dashboard}: {title}")
    assert not empty, f"panels without data: {empty}"


def test_rules_load_and_evaluate_against_the_run(stack: Stack) -> None:
    groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    shipped = [
        rule
        for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
    assert len(rules) == len(shipped) >= 23  # every shipped rule loaded
    assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]
    # the RED recording rule has per-route series from the run
    assert query(stack.prometheus, "route:http_server_requests:rate5m")
    # every target was up
    targets = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == {"app", "worker", "locust"}
