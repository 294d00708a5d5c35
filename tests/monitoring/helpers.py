"""Small factories the monitoring tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry

from asyncproof.monitoring import Instrumentation


@asynccontextmanager
async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An AsyncClient on the app through ASGITransport, with its lifespan run."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def requests_seen(instrumentation: Instrumentation, **labels: str) -> float:
    """How many requests with these labels (and any values of the others) the histogram counted,
    after a flush."""
    instrumentation.recorder.flush()
    return sum(
        sample.value
        for metric in instrumentation.registry.collect()
        for sample in metric.samples
        if sample.name == "http_server_request_duration_seconds_count"
        and labels.items() <= sample.labels.items()
    )


def series(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    """The label sets of every sample of ``name`` in the registry."""
    return [s.labels for metric in registry.collect() for s in metric.samples if s.name == name]
