"""One endpoint per way of running slow work in FastAPI, the trap included."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, Response
from pydantic import BaseModel

from asyncproof.app.json_limits import JsonLimitedRoute
from asyncproof.app.routes import UNREADABLE_BODY, problem
from asyncproof.app.services import ServicesDep
from asyncproof.app.work import (
    TASK_NAME,
    AsyncWorkRequest,
    InlineWorkRequest,
    QueueUnavailable,
    WorkRequest,
    run_async,
    run_blocking,
)

router = APIRouter(prefix="/work", tags=["work"], responses=UNREADABLE_BODY, route_class=JsonLimitedRoute)


class Accepted(BaseModel):
    task_id: str
    status_url: str
    status: str


def _accepted(request: Request, response: Response, task_id: str) -> Accepted:
    url = str(request.url_for("get_task", task_id=task_id).path)
    response.headers["Location"] = url
    return Accepted(task_id=task_id, status_url=url, status="pending")


@router.post(
    "/async-blocking",
    summary="TRAP: blocking work inside async def",
    description="Kept on purpose to prove what it does: the blocking call runs on the event loop, so "
    "this worker answers nothing else (health probes included) until it returns. Do not copy.",
)
async def async_blocking(work: InlineWorkRequest) -> dict[str, Any]:
    return run_blocking(work)  # the trap this endpoint demonstrates


@router.post(
    "/sync",
    summary="Blocking work in a def endpoint (AnyIO threadpool)",
    description="FastAPI runs a def endpoint in AnyIO's threadpool (40 tokens by default): fine until "
    "the pool is full, then requests queue for a token.",
)
def sync(work: InlineWorkRequest) -> dict[str, Any]:
    return run_blocking(work)


@router.post(
    "/async",
    summary="Non-blocking awaited I/O",
    description="`kind=io` only: awaiting a non-blocking sleep keeps the event loop free.",
)
async def async_io(work: AsyncWorkRequest) -> dict[str, Any]:
    return await run_async(work)


@router.post(
    "/background-tasks",
    status_code=202,
    summary="202 at once, work in FastAPI BackgroundTasks",
    description="The response goes out first; the work then runs in this worker (AnyIO threadpool) and "
    "is lost if the worker stops. Its status is kept in the task store.",
)
async def background(
    work: WorkRequest,
    background_tasks: BackgroundTasks,
    app: ServicesDep,
    request: Request,
    response: Response,
) -> Accepted:
    record = await app.runner.create("background")
    background_tasks.add_task(app.runner.execute, record.id, "background", work)
    return _accepted(request, response, record.id)


@router.post(
    "/executor",
    status_code=202,
    summary="202 with a task id; run_in_executor on a bounded thread pool",
)
async def executor(work: WorkRequest, app: ServicesDep, request: Request, response: Response) -> Accepted:
    record = await app.runner.submit("executor", work)
    return _accepted(request, response, record.id)


@router.post(
    "/process",
    status_code=202,
    summary="202 with a task id; CPU work in a process pool",
)
async def process(work: WorkRequest, app: ServicesDep, request: Request, response: Response) -> Accepted:
    record = await app.runner.submit("process", work)
    return _accepted(request, response, record.id)


@router.post(
    "/queue",
    status_code=202,
    summary="202 with a task id; a Celery task through the broker",
    description="Published from a small thread pool with a deadline: with the broker down this answers "
    "503 within about `broker_timeout_seconds`, and the event loop never waits on the broker.",
    responses=problem(503, "No broker configured, or the broker did not take the task in time"),
)
async def queue(work: WorkRequest, app: ServicesDep, request: Request, response: Response) -> Accepted:
    if app.publisher is None:
        raise HTTPException(503, "the queue style needs a broker: set ASYNCPROOF_BROKER_URL")
    if app.settings.task_store == "memory":
        raise HTTPException(
            503,
            "the queue style needs a task store the Celery worker can also write (sqlite or redis): "
            + "set ASYNCPROOF_TASK_STORE",
        )
    record = await app.runner.create("queue")
    submitted_at = time.time()
    try:
        await app.publisher.publish(record.id, work, submitted_at)
    except QueueUnavailable as error:
        await app.store.update(
            record.id, status="failed", reason="not queued", error=str(error), finished_at=time.time()
        )
        raise HTTPException(503, f"task queue unavailable: {error}", headers={"Retry-After": "5"}) from error
    app.queue_tracker.submitted(TASK_NAME)
    return _accepted(request, response, record.id)
