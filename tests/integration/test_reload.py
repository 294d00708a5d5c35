"""Two Gunicorn reloads (SIGHUP) under keep-alive load behind the shipped nginx/nginx.conf: no request
answered anything but 2xx. benchmarks/reload.py measures the same thing longer, next to the stock
worker that lost POSTs to 502s."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reload import run

pytestmark = pytest.mark.integration


def test_two_reloads_under_load_lose_no_request(tmp_path: Path) -> None:
    outcomes = run("shipped", seconds=9, folder=tmp_path)
    assert sum(outcomes.values()) > 1000, outcomes  # the load really ran through both reloads
    assert {status for _, status in outcomes} == {200}, outcomes
