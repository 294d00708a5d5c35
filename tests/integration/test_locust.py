"""Locust runs as its own process (it patches the standard library with gevent) against a served app:
gates evaluated on the master with exact percentiles, distributed runs, probes, client-side metrics."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import BIN, ROOT, free_port, request_count, running, scrape, wait_for

pytestmark = pytest.mark.integration

LOCUSTFILES = "tests/integration/locust_sample.py,loadtests/locustfile.py"


@pytest.fixture
def sample_app(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """sample_app under Uvicorn; yields its URL and the file that sets its readiness check's mode."""
    check_file = tmp_path / "check"
    check_file.write_text("ok")
    port = free_port()
    command = [
        str(BIN / "uvicorn"),
        "tests.integration.sample_app:app",
        "--port",
        str(port),
        "--no-access-log",
    ]
    env = {"ASYNCPROOF_TEST_CHECK_FILE": str(check_file)}
    with running(command, env=env, log=tmp_path / "server.log") as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health/live", process=process)
        yield url, check_file


def locust(url: str, tmp_path: Path, *args: str, seconds: int = 8) -> list[str]:
    return [
        str(BIN / "locust"),
        "-f",
        LOCUSTFILES,
        "--headless",
        "--only-summary",
        "-H",
        url,
        "-u",
        "4",
        "-r",
        "10",
        "-t",
        f"{seconds}s",
        "--probe-period",
        "0.25",
        "--results-json",
        str(tmp_path / "results.json"),
        *args,
    ]


def write_gates(path: Path, thresholds: dict[str, list[str]]) -> Path:
    path.write_text(json.dumps({"thresholds": thresholds}))
    return path


def test_gates_use_exact_timings_and_a_failed_gate_exits_3(
    sample_app: tuple[str, Path], tmp_path: Path
) -> None:
    url, check_file = sample_app
    check_file.write_text("fail")  # a dependency is down: readiness fails, liveness must not
    gates = write_gates(
        tmp_path / "gates.json",
        {
            "GET /items/{id}": ["p99 < 1000ms", "fail_ratio == 0"],
            "GET /slow": ["p50 < 10ms"],  # it sleeps 50 ms: fails
            "probe": ["would_restart == 0", "would_unready == 0"],  # the second fails
            "server": ["loop_lag.p99 < 0.5"],
        },
    )
    command = locust(url, tmp_path, "--gates", str(gates), "SampleUser", "LivenessProbe", "ReadinessProbe")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "SLO gates:" in output
    assert "4 passed, 2 failed" in output
    results = json.loads((tmp_path / "results.json").read_text())
    verdicts = {(gate["target"], gate["condition"]): gate["passed"] for gate in results["gates"]}
    assert verdicts == {
        ("GET /items/{id}", "p99 < 1000ms"): True,
        ("GET /items/{id}", "fail_ratio == 0"): True,
        ("GET /slow", "p50 < 10ms"): False,
        ("probe", "would_restart == 0"): True,
        ("probe", "would_unready == 0"): False,
        ("server", "loop_lag.p99 < 0.5"): True,
    }
    slow = results["endpoints"]["GET /slow"]
    # raw timings: a 50 ms sleep reads as 50.x ms, not Locust's rounded 50 or 60
    assert 50 <= slow["p50"] < 150
    assert slow["p50"] != round(slow["p50"], -1)
    # the client's count is the server's, but for requests in flight when the run stopped (one per user)
    unrecorded = (
        request_count(scrape(url), "GET", "/items/{item_id}", 200)
        - results["endpoints"]["GET /items/{id}"]["count"]
    )
    assert 0 <= unrecorded <= 3
    readiness, liveness = results["probes"]["readiness"], results["probes"]["liveness"]
    assert readiness["failures"] == readiness["count"] > 0
    assert liveness["failures"] == 0
    assert results["probe"]["would_unready"] == 1  # once unready, it stays so until a probe passes
    assert results["server"]["scrapes"] >= 5


def test_distributed_run_gates_on_the_master_and_exports_client_metrics(
    sample_app: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = sample_app
    gates = write_gates(
        tmp_path / "gates.json",
        {"*": ["fail_ratio == 0"], "GET /items/{id}": ["p99 < 1000ms"], "probe": ["would_restart == 0"]},
    )
    port = free_port()
    command = locust(
        url,
        tmp_path,
        "--processes",
        "2",
        "--gates",
        str(gates),
        "--client-metrics-port",
        str(port),
        "SampleUser",
        "LivenessProbe",
        seconds=10,
    )
    with running(command, log=tmp_path / "locust.log") as process:
        exported = ""
        deadline = time.monotonic() + 8
        while (
            time.monotonic() < deadline
            and 'locust_requests_total{method="GET",name="/items/{id}"}' not in exported
        ):
            time.sleep(0.5)
            try:
                exported = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                continue
        assert process.wait(timeout=60) == 0, (tmp_path / "locust.log").read_text()[-3000:]
    assert "locust_users 4.0" in exported  # -u 4: the prober and 3 SampleUsers, over both workers
    assert 'locust_response_time_seconds_bucket{le="0.005",method="GET",name="/items/{id}"}' in exported
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(gate["passed"] for gate in results["gates"])
    # every worker's samples reached the master (a lost shipment would lose seconds of them): the
    # count is the server's but for requests in flight when the run stopped (one per user)
    unrecorded = (
        request_count(scrape(url), "GET", "/items/{item_id}", 200)
        - results["endpoints"]["GET /items/{id}"]["count"]
    )
    assert 0 <= unrecorded <= 3
    assert results["probes"]["liveness"]["count"] >= 20


def test_a_bad_gates_file_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    gates = write_gates(tmp_path / "gates.json", {"GET /x": ["p42 < 1s"]})
    command = locust("http://127.0.0.1:9", tmp_path, "--gates", str(gates), "SampleUser")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown figure 'p42'" in result.stderr
    assert not (tmp_path / "results.json").exists()


def test_step_shape_adds_users_step_by_step(sample_app: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = sample_app
    command = [
        str(BIN / "locust"),
        *("-f", f"{LOCUSTFILES},loadtests/shapes.py", "--headless", "--only-summary", "-H", url),
        *("-u", "6", "-t", "7s", "--step-users", "2", "--step-seconds", "2"),
        *("--results-json", str(tmp_path / "results.json"), "SampleUser"),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    users = [
        count for count in json.loads((tmp_path / "results.json").read_text())["series"]["users"] if count
    ]
    assert users == sorted(users)  # never fewer users than a second before
    assert {2, 4, 6} <= set(users)
    assert max(users) == 6  # -u caps the steps
