"""An instrumented app with 50 routes, for the loop-lag-while-scraped benchmark.

``ASYNCPROOF_BENCH_METRICS_PORT`` set: ``/metrics`` on that port, answered by the deployment's
exposition process; unset: on the app's port, rendered in the worker that takes the scrape.
``/block?seconds=N`` stalls its worker's event loop (``time.sleep`` in ``async def``).
"""

from __future__ import annotations

import os
import time

from fastapi import FastAPI, Response

from asyncproof import monitoring

ROUTES = 50

app = FastAPI()


def _make(index: int) -> None:
    @app.get(f"/route{index}/{{item_id}}", name=f"route{index}")
    async def handler(item_id: int) -> dict[str, int]:
        return {"route": index, "item_id": item_id}


for _index in range(ROUTES):
    _make(_index)


@app.get("/block")
async def block(seconds: float = 1.0) -> Response:
    time.sleep(seconds)  # noqa: ASYNC251  (the stall this benchmark sets on purpose)
    return Response(str(os.getpid()))


monitoring.instrument(
    app,
    metrics_port=int(os.environ.get("ASYNCPROOF_BENCH_METRICS_PORT", "0")) or None,
    metrics_host="127.0.0.1",
)
