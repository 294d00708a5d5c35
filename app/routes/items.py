"""Items over SQLAlchemy async, read through the cache."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from asyncproof.app.data import ItemIn, ItemOut
from asyncproof.app.json_limits import JsonLimitedRoute
from asyncproof.app.routes import UNREADABLE_BODY, problem
from asyncproof.app.services import ServicesDep

router = APIRouter(prefix="/items", tags=["items"], route_class=JsonLimitedRoute)


@router.post("", status_code=201, responses=UNREADABLE_BODY)
async def create_item(item: ItemIn, app: ServicesDep) -> ItemOut:
    return await app.items.create(item)


@router.get("/{item_id}", responses=problem(404, "No such item"))
async def get_item(item_id: Annotated[int, Path(ge=1, le=2**63 - 1)], app: ServicesDep) -> ItemOut:
    item = await app.items.get(item_id)
    if item is None:
        raise HTTPException(404, f"item {item_id} not found")
    return item


@router.get("")
async def list_items(app: ServicesDep, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[ItemOut]:
    return await app.items.list(limit)
