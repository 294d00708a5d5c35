"""The reference app's thread pool and process pool show up in its /metrics, saturation included."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncproof.monitoring import contract
from tests.app.helpers import app_client, settings_for, wait_terminal

pytestmark = pytest.mark.anyio

NAMES = {
    contract.EXECUTOR_PENDING_WORK.name: "pending",
    contract.EXECUTOR_BUSY_WORKERS.name: "busy",
    contract.EXECUTOR_MAX_WORKERS.name: "max",
}


async def pools(client: httpx.AsyncClient) -> dict[str, dict[str, float]]:
    """{executor: {pending, busy, max}} from a scrape of the app's /metrics."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for sample in family.samples:
            if sample.name in NAMES:
                found.setdefault(sample.labels["executor"], {})[NAMES[sample.name]] = sample.value
    return found


async def test_metrics_show_the_executor_style_pool_and_its_queue(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path, executor_threads=1)) as (client, _):
        assert (await pools(client))["executor"] == {"pending": 0, "busy": 0, "max": 1}
        accepted = [
            (await client.post("/work/executor", json={"kind": "io", "duration_ms": 600})).json()["task_id"]
            for _ in range(3)
        ]
        deadline = time.monotonic() + 5
        # each task reaches the pool once its asyncio task has run: poll until all three have
        while (saturated := (await pools(client))["executor"])["pending"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task_id in accepted:
            assert (await wait_terminal(client, task_id))["status"] == "success"
    assert saturated == {"pending": 2, "busy": 1, "max": 1}


async def test_metrics_show_the_process_pool_once_it_is_made(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path, process_pool_workers=2)) as (client, _):
        assert "process" not in await pools(client)  # made on first use
        response = await client.post("/work/process", json={"kind": "io", "duration_ms": 1000})
        deadline = time.monotonic() + 10
        while (running := (await pools(client)).get("process", {})).get("busy", 0) < 1 and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.02)
        assert (await wait_terminal(client, response.json()["task_id"]))["status"] == "success"
        done = (await pools(client))["process"]
    assert running == {"pending": 0, "busy": 1, "max": 2}
    assert done == {"pending": 0, "busy": 0, "max": 2}
