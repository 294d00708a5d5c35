"""The one-route app the throughput benchmark serves; ASYNCPROOF_BENCH_VARIANT picks bare or instrumented."""

from __future__ import annotations

import json
import os

from fastapi import FastAPI

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, object]:
    return {"item_id": item_id, "name": "widget"}


if os.environ.get("ASYNCPROOF_BENCH_VARIANT", "bare") == "asyncproof":
    from asyncproof import monitoring

    # Extra keyword arguments for instrument(), as JSON, to measure what each option costs.
    monitoring.instrument(app, **json.loads(os.environ.get("ASYNCPROOF_BENCH_OPTIONS", "{}")))
