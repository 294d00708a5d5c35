"""``asyncproof prove`` end to end on two scenarios, and its report rendered by a real browser."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.processes import BIN, ROOT
from tests.services import require_executable

pytestmark = pytest.mark.integration


def test_prove_writes_verdicts_and_a_report_a_browser_renders(tmp_path: Path) -> None:
    chromium = require_executable("chromium")
    out = tmp_path / "report"
    command = [str(BIN / "asyncproof"), "prove", "--quick", "--only", "async", "--only", "executor-memory"]
    result = subprocess.run(
        [*command, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1/2] async:" in result.stdout  # progress while it runs
    assert "every observed verdict matches the expected one" in result.stdout

    report = json.loads((out / "report.json").read_text())
    rows = {row["scenario"]: row for row in report["scenarios"]}
    assert set(rows) == {"async", "executor-memory"}
    assert rows["executor-memory"]["observed"] == "loses polls"
    assert rows["executor-memory"]["polls_404"] > 0
    assert rows["async"]["observed"] == "healthy"
    assert rows["async"]["throughput_rps"] > 0
    for name in rows:
        for produced in ("chart.png", "locust.html", "locust_stats.csv", "results.json", "server.log"):
            assert (out / name / produced).stat().st_size > 0, (name, produced)
        assert (out / name / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    table = re.search(r'<table id="verdicts">(.*?)</table>', dom, re.S)
    assert table is not None, dom[:2000]
    assert len(re.findall(r'<tr class="match">', table.group(1))) == 2
    assert "EXPECTED" in table.group(1)
    # both charts decoded in the browser (the page counts them once loaded)
    assert 'data-charts-loaded="2"' in dom


def test_prove_refuses_an_unknown_scenario(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "asyncproof"), "prove", "--only", "nope", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown scenario nope" in result.stderr
    assert "sync-saturated" in result.stderr
