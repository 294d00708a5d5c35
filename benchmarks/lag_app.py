"""An instrumented app with 50 routes, for the loop-lag-while-scraped benchmark."""

from __future__ import annotations

from fastapi import FastAPI

from asyncproof import monitoring

ROUTES = 50

app = FastAPI()


def _make(index: int) -> None:
    @app.get(f"/route{index}/{{item_id}}", name=f"route{index}")
    async def handler(item_id: int) -> dict[str, int]:
        return {"route": index, "item_id": item_id}


for _index in range(ROUTES):
    _make(_index)

monitoring.instrument(app)
