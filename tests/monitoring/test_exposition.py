from __future__ import annotations

import asyncio
import os
import threading
import time
import urllib.request

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from asyncproof import monitoring
from asyncproof.monitoring import contract
from tests.monitoring.helpers import client_for
from tests.processes import free_port

pytestmark = pytest.mark.anyio


def make_app(**options: object) -> tuple[FastAPI, monitoring.Instrumentation]:
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/sync")
    def sync_endpoint() -> dict[str, str]:
        time.sleep(0.3)
        return {}

    return app, monitoring.instrument(app, registry=CollectorRegistry(), **options)


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        family.name: [(s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


async def test_metrics_answers_200_directly_in_text_format() -> None:
    app, _ = make_app()
    async with client_for(app) as client:
        await client.get("/hello")
        response = await client.get("/metrics", follow_redirects=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = parse(response.text)
    (labels, value) = next(
        (labels, value)
        for labels, value in families["http_server_request_duration_seconds"]
        if labels.get("http_route") == "/hello" and "le" not in labels
    )
    assert labels["http_request_method"] == "GET"
    assert value == 1  # the _count sample comes first


async def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    app, _ = make_app()
    async with client_for(app) as client:
        response = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_every_contract_metric_of_a_web_worker_is_exposed() -> None:
    app, _ = make_app()
    async with client_for(app) as client:
        await asyncio.sleep(0.3)  # a few sampler ticks
        text = (await client.get("/metrics")).text
    names = {family.name for family in text_string_to_metric_families(text)}
    for spec in contract.ALL_METRICS:
        assert spec.name in names, spec.name


async def test_runtime_metrics_have_sane_values() -> None:
    app, _instr = make_app(report_interval=0.1)
    async with client_for(app) as client:
        await asyncio.sleep(0.4)
        text = (await client.get("/metrics")).text
    families = parse(text)
    pid = str(os.getpid())
    rss = dict((labels["pid"], value) for labels, value in families["process_resident_memory_bytes"])
    assert rss[pid] > 10_000_000
    assert any(labels == {"pid": pid} for labels, _ in families["process_cpu_seconds"])
    assert 0 <= families["system_cpu_utilization_ratio"][0][1] <= 1
    assert 0 < families["system_memory_utilization_ratio"][0][1] <= 1
    assert families["anyio_threadpool_total_tokens"][0][1] == 40
    lag_count = next(v for labels, v in families["asyncio_event_loop_lag_seconds"] if "le" not in labels)
    assert lag_count >= 2


async def test_threadpool_gauges_show_sync_endpoints_in_flight() -> None:
    app, instr = make_app()
    async with client_for(app) as client:
        pending = [asyncio.ensure_future(client.get("/sync")) for _ in range(3)]
        await asyncio.sleep(0.15)
        instr.sampler.sample_now()
        borrowed = instr.registry.get_sample_value("anyio_threadpool_borrowed_tokens")
        await asyncio.gather(*pending)
    assert borrowed == 3


async def test_event_loop_lag_records_a_blocked_loop() -> None:
    app, instr = make_app()
    async with client_for(app) as client:
        await asyncio.sleep(0.25)
        time.sleep(0.5)  # block the loop, as a blocking call in async def does
        await asyncio.sleep(0.25)
        await client.get("/metrics")
    slow = instr.registry.get_sample_value("asyncio_event_loop_lag_seconds_bucket", {"le": "0.25"})
    total = instr.registry.get_sample_value("asyncio_event_loop_lag_seconds_count")
    assert total is not None
    assert slow is not None
    assert total - slow >= 1  # at least one tick saw more than 250 ms of lag


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": True})])
async def test_event_loop_lag_sampler_works_on_uvloop() -> None:
    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    app, instr = make_app()
    async with client_for(app):
        await asyncio.sleep(0.35)
    count = instr.registry.get_sample_value("asyncio_event_loop_lag_seconds_count")
    assert count is not None
    assert count >= 2


async def test_rendering_a_scrape_does_not_stall_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    app, instr = make_app()
    render = instr.exposition.render

    def slow_render(accept: str | None) -> tuple[bytes, str]:
        time.sleep(0.5)  # what a big multiprocess folder costs
        return render(accept)

    monkeypatch.setattr(instr.exposition, "render", slow_render)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with client_for(app) as client:
        task = asyncio.ensure_future(ticker())
        response = await client.get("/metrics")
        task.cancel()
    assert response.status_code == 200
    assert ticks >= 20


async def test_metrics_on_a_separate_port() -> None:
    port = free_port()
    app, _ = make_app(metrics_port=port, metrics_host="127.0.0.1")
    async with client_for(app) as client:
        await client.get("/hello")
        assert (await client.get("/metrics")).status_code == 404
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        )
    assert 'http_route="/hello"' in body
    assert not any(t.name == "asyncproof-metrics-server" for t in threading.enumerate())
