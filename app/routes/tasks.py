"""Task status, whatever style ran the task."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel

from asyncproof.app.json_limits import JsonLimitedRoute
from asyncproof.app.routes import problem
from asyncproof.app.services import ServicesDep
from asyncproof.app.tasks.store import Status

router = APIRouter(prefix="/tasks", tags=["tasks"], route_class=JsonLimitedRoute)


class TaskOut(BaseModel):
    id: str
    style: str
    status: Status
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    reason: str | None
    pid: int | None
    attempts: int


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


@router.get("/{task_id}", name="get_task", responses=problem(404, "No such task (here)"))
async def get_task(
    task_id: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")],
    app: ServicesDep,
) -> TaskOut:
    record = await app.store.get(task_id)
    if record is None:
        raise HTTPException(404, f"task {task_id} not found in the {app.store.name} task store")
    fields = record.model_dump()
    for name in ("created_at", "started_at", "finished_at"):
        fields[name] = _time(fields[name])
    return TaskOut(**fields)
