"""An app that uses only monitoring's public API, for the integration tests to run under real servers.

The readiness check reads a mode file named by ASYNCPROOF_TEST_CHECK_FILE: ``ok``, ``fail`` or
``hang``, so a test can make a dependency fail or hang while the servers run.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Response

from asyncproof import monitoring

app = FastAPI()
instrumentation = monitoring.instrument(app, readiness_cache_seconds=0.2)


@instrumentation.health.check("dependency", timeout=0.3)
async def dependency() -> str:
    path = os.environ.get("ASYNCPROOF_TEST_CHECK_FILE")
    mode = (await asyncio.to_thread(Path(path).read_text)).strip() if path else "ok"
    if mode == "fail":
        raise ConnectionError("dependency refused the connection")
    if mode == "hang":
        await asyncio.sleep(60)
    return mode


@app.middleware("http")
async def worker_pid(request, call_next):  # type: ignore[no-untyped-def]
    response = await call_next(request)
    response.headers["x-worker-pid"] = str(os.getpid())
    return response


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    if item_id >= 1000:
        raise HTTPException(status_code=404, detail="no such item")
    return {"item_id": item_id}


@app.post("/items", status_code=201)
async def create_item() -> dict[str, str]:
    return {"status": "created"}


@app.get("/slow")
async def slow(seconds: float = 0.2) -> Response:
    await asyncio.sleep(seconds)
    return Response("done")


@app.get("/block")
async def block(seconds: float = 0.05) -> Response:
    """Stalls this worker's event loop, so that connections arriving meanwhile go to the other workers."""
    time.sleep(seconds)
    return Response("done")
