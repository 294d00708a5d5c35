"""Build the reference app in-process for tests, and poll its tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from asyncproof.app.main import create_app
from asyncproof.app.settings import Settings
from asyncproof.app.tasks.store import TERMINAL
from tests.monitoring.helpers import client_for


def settings_for(state_dir: Path, **overrides: Any) -> Settings:
    return Settings(state_dir=str(state_dir), **overrides)


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(settings, registry=CollectorRegistry())
    async with client_for(app) as client:
        yield client, app


async def wait_terminal(client: httpx.AsyncClient, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll GET /tasks/{id} until the task is success or failed."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] in TERMINAL:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"task {task_id} still {body['status']} after {timeout}s: {body}")
        await asyncio.sleep(0.05)


def sample(app: FastAPI, name: str, **labels: str) -> float:
    instrumentation = app.state.asyncproof
    instrumentation.recorder.flush()
    return instrumentation.registry.get_sample_value(name, labels) or 0.0
