"""The same requests give the same samples in single-process mode and in multiprocess mode.

The request durations come from a fake clock, so that every bucket and sum can be compared exactly:
one run in this process (single-process mode), one in a forked child writing its files to a
multiprocess folder as a Gunicorn worker does; then both scrapes, in both formats, are parsed and
every sample of the request metrics compared.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from prometheus_client import CollectorRegistry, values
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from asyncproof import monitoring
from asyncproof.monitoring import middleware
from asyncproof.monitoring.exposition import Exposition

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
COMPARED = ("http_server_request_duration_seconds", "http_server_active_requests")


def fake_clock() -> Callable[[], float]:
    # each request reads the clock twice: durations cycle through 1 ms, 30 ms, 0.1 s (a bound), 2 s
    steps = itertools.cycle([0.001, 10.0, 0.03, 20.0, 0.1, 30.0, 2.0, 40.0])
    now = itertools.accumulate(steps, initial=1000.0)
    return lambda: next(now)


def serve_the_requests(registry: CollectorRegistry) -> monitoring.Instrumentation:
    app = FastAPI()
    instrumentation = monitoring.instrument(app, registry=registry)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if item_id >= 100:
            raise HTTPException(404, "no such item")
        return {"item_id": item_id}

    @app.post("/items", status_code=201)
    async def create() -> dict[str, str]:
        return {"status": "created"}

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for number in range(60):
                await client.get(f"/items/{number * 7}")
                await client.post("/items")
                await client.get("/nowhere")
                await client.delete("/items/1")  # 405

    asyncio.run(run())
    instrumentation.recorder.flush()
    return instrumentation


def samples(
    body: str, parse: Callable[[str], object]
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parse(body)  # type: ignore[attr-defined]
        if family.name in COMPARED
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_single_and_multiprocess_scrapes_agree_sample_for_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(middleware, "perf_counter", fake_clock())
    single = serve_the_requests(CollectorRegistry())
    folder = tmp_path / "metrics"
    folder.mkdir()
    monkeypatch.setattr(middleware, "perf_counter", fake_clock())
    child = os.fork()
    if child == 0:  # a worker of a multiprocess server
        code = 1
        try:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
            values.ValueClass = values.MultiProcessValue()
            serve_the_requests(CollectorRegistry())
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    multi = Exposition(CollectorRegistry(), str(folder))
    for accept, parse in ((None, parse_text), (OPENMETRICS, parse_openmetrics)):
        body_single, _ = single.exposition.render(accept)
        body_multi, _ = multi.render(accept)
        expected = samples(body_single.decode(), parse)
        assert len(expected) > 90  # buckets of several routes, statuses and methods
        assert samples(body_multi.decode(), parse) == expected
