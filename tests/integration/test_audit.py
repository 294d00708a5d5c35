"""``asyncproof audit`` end to end, as a team runs it on its own app: FastAPI's "Bigger Applications"
layout (``bigger_app/``, written in that shape, with one blocking route added) and the reference app,
whose verdicts must agree with ``asyncproof prove``'s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest

from asyncproof.loadtests.prove import SCENARIOS
from tests.processes import BIN, free_port, running, wait_for

pytestmark = pytest.mark.integration

BIGGER_APP = Path(__file__).with_name("bigger_app")
TOKEN = "X-Token: fake-super-secret-token"


def audit(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "asyncproof"), "audit", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_audit_names_the_blocking_route_and_its_line_in_an_app_we_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    gates = tmp_path / "gates.yaml"
    gates.write_text(
        'thresholds:\n  "route /reports/monthly": ["stalls == 0"]\n  "GET /users/": ["fail_ratio < 1%"]\n'
        'verdicts:\n  "*": [healthy]\n'
    )
    result = audit(
        "app.main:app",
        *("--quick", "-H", TOKEN, "--users", "20", "--rate", "40"),
        *("--gates", str(gates), "--out", str(out)),
        cwd=BIGGER_APP,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # a verdict other than healthy
    report = json.loads((out / "report.json").read_text())
    rows = {row["route"]: row for row in report["routes"]}

    blocking = rows["GET /reports/monthly"]
    assert blocking["verdict"] in ("restarts", "blocks the loop"), blocking
    assert blocking["stalls"] > 0
    assert blocking["blocked_at"].startswith("app/routers/reports.py:"), blocking
    assert blocking["blocked_at"].endswith("in monthly_report (time.sleep)")
    assert not blocking["allowed"]
    assert report["routes"][0]["route"] == "GET /reports/monthly"  # worst first

    for healthy in (
        "GET /",
        "GET /users/",
        "GET /users/me",
        "GET /users/{username}",
        "GET /items/",
        "POST /admin/",
    ):
        assert rows[healthy]["verdict"] == "healthy", rows[healthy]
        assert rows[healthy]["requests"] > 0
        assert rows[healthy]["stalls"] == 0
    # the -H token reached the routes behind the router's header dependency
    assert rows["GET /items/"]["fail_ratio"] == 0
    # data-dependent routes: refused for every generated id, reported as skipped with the reason
    assert rows["GET /items/{item_id}"]["verdict"] == "skipped"
    assert "404" in rows["GET /items/{item_id}"]["skipped"]
    assert "403" in rows["PUT /items/{item_id}"]["skipped"]

    failed = {(g["target"], g["condition"]) for g in report["gates"] if not g["passed"]}
    assert failed == {("route /reports/monthly", "stalls == 0")}

    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("tests") == "9"
    assert suite.get("skipped") == "2"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["GET /reports/monthly"].find("failure") is not None
    assert cases["GET /users/"].find("failure") is None
    assert cases["GET /items/{item_id}"].find("skipped") is not None
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 7  # one chart per loaded route
    assert "app/routers/reports.py:" in html
    assert "GET /reports/monthly" in result.stdout
    assert "<-- not allowed" in result.stdout


def test_audit_of_the_reference_app_agrees_with_prove(tmp_path: Path) -> None:
    styles = {"async-blocking", "async", "sync"}
    expected = {
        f"POST /work/{s.name}": s.expected.split(",")[0]
        for s in SCENARIOS
        if s.name in styles and s.server == "gunicorn"
    }
    assert len(expected) == 3
    env = {**os.environ, "ASYNCPROOF_STATE_DIR": str(tmp_path / "state")}
    only = [arg for route in expected for arg in ("--only", route)]
    result = subprocess.run(
        [str(BIN / "asyncproof"), "audit", "asyncproof.app.main:app", "--quick", "--users", "10", *only],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    report = json.loads((tmp_path / "asyncproof-audit" / "report.json").read_text())
    observed = {row["route"]: row["verdict"] for row in report["routes"] if row["route"] in expected}
    assert observed == expected, output
    assert result.returncode == 1  # async-blocking: restarts


def test_bad_input_exits_2_with_a_message_that_says_what_to_do(tmp_path: Path) -> None:
    cases = [
        (["nosuchmodule:app"], "cannot import 'nosuchmodule'"),
        (["app.main:nothing"], "has no attribute 'nothing'"),
        (["app.main"], "MODULE:APP"),
        (["app.main:app", "--gates", str(tmp_path / "missing.yaml")], "cannot read the gates file"),
        (["app.main:app", "-H", "no colon"], "Name: value"),
        (["app.main:app", "--url", "http://127.0.0.1:1"], "not both"),
        ([], "MODULE:APP"),
    ]
    for args, message in cases:
        result = audit(*args, "--quick", "--out", str(tmp_path / "out"), cwd=BIGGER_APP, timeout=120)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)


def test_ctrl_c_stops_every_process_the_audit_started(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    with subprocess.Popen(
        [str(BIN / "asyncproof"), "audit", "app.main:app", "-H", TOKEN, "--out", str(out)],
        cwd=BIGGER_APP,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            deadline = time.monotonic() + 120
            for line in process.stdout:
                if line.startswith("load:") or time.monotonic() > deadline:
                    break
            time.sleep(3)  # Locust and Gunicorn are running
            started = psutil.Process(process.pid).children(recursive=True)
            assert any("locust" in " ".join(p.cmdline()) for p in started)
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=60)
            assert code == 130
            assert "interrupted" in process.stdout.read()
            _, alive = psutil.wait_procs(started, timeout=10)
            assert not alive, [p.cmdline() for p in alive]
        finally:
            if process.poll() is None:
                process.kill()


def test_setup_and_env_file_give_the_load_its_credentials(tmp_path: Path) -> None:
    env_file = tmp_path / "audit.env"
    env_file.write_text("# the app's settings\nBIGGER_APP_TOKEN=fake-super-secret-token\n")
    out = tmp_path / "audit"
    result = audit(
        "app.main:app",
        *("--quick", "--users", "5", "--rate", "20", "--duration", "2", "--only", "items"),
        *("--env-file", str(env_file), "--setup", "audit_setup:token", "--out", str(out)),
        cwd=BIGGER_APP,
    )
    output = result.stdout + result.stderr
    rows = {row["route"]: row for row in json.loads((out / "report.json").read_text())["routes"]}
    # the token the setup returned reached the router's header dependency: loaded, not refused
    assert rows["GET /items/"]["verdict"] == "healthy", output
    assert rows["GET /items/"]["requests"] > 0
    assert rows["GET /users/"]["skipped"] == "not chosen by --only"
    assert result.returncode == 0, output

    failing = audit("app.main:app", "--setup", "exit 3", "--out", str(out), cwd=BIGGER_APP)
    assert failing.returncode == 2
    assert "--setup 'exit 3' failed (exit 3)" in failing.stderr


def test_url_audits_a_service_that_is_already_running(tmp_path: Path) -> None:
    port = free_port()
    env = {"ASYNCPROOF_STATE_DIR": str(tmp_path / "state")}
    serve = [str(BIN / "asyncproof"), "serve", "--workers", "1", "--port", str(port)]
    with running(serve, env=env, log=tmp_path / "server.log") as server:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health/ready", process=server)
        out = tmp_path / "audit"
        result = audit(
            *("--url", url, "--quick", "--users", "5", "--rate", "20", "--duration", "2"),
            *("--only", "GET /info", "--out", str(out)),
            cwd=tmp_path,
        )
        assert server.poll() is None  # the audit leaves a service it did not start alone
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == url
    (info,) = [row for row in report["routes"] if row["route"] == "GET /info"]
    assert info["verdict"] == "healthy"
    assert info["requests"] > 0
    assert report["server"]["scrapes"] > 0  # its /metrics was read
    assert not (out / "server.log").exists()


def test_your_own_locust_users_load_what_generated_requests_cannot_reach(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    result = audit(
        "app.main:app",
        *("--quick", "-H", TOKEN, "--users", "10", "--rate", "40", "--duration", "3"),
        *("--only", "GET /users/", "-f", "locustfile.py", "--out", str(out)),
        cwd=BIGGER_APP,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    report = json.loads((out / "report.json").read_text())
    rows = {row["route"]: row for row in report["routes"]}
    theirs = rows["your users (locustfile.py)"]
    assert theirs["verdict"] == "healthy", theirs
    assert theirs["requests"] > 0
    assert theirs["fail_ratio"] == 0
    assert theirs["sample_keys"] == ["GET /items/{item_id}", "PUT /items/{item_id}"]
    assert rows["GET /users/"]["verdict"] == "healthy"
    # their users ran in their phase and all together, never in a route's phase
    phases = {phase["name"]: phase for phase in json.loads((out / "phases.json").read_text())}
    assert list(phases) == ["GET /users/", "your users", "together"]
    raw = json.loads((out / "raw.json").read_text())
    users_phase = phases["GET /users/"]
    theirs_during_users = [
        sample
        for sample in raw["samples"]["GET /items/{item_id}"]
        if raw["started"] + users_phase["start"] + 1 <= sample[0] < raw["started"] + users_phase["end"] - 1
    ]
    assert theirs_during_users == []
    assert report["together"] is not None

    missing = audit("app.main:app", "-f", "nosuch.py", "--out", str(out), cwd=BIGGER_APP)
    assert missing.returncode == 2
    assert "give a Locust file" in missing.stderr
