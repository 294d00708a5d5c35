"""Added to the tutorial's layout: a report built with a blocking call inside ``async def``."""

import time

from fastapi import APIRouter

router = APIRouter(prefix="/reports", tags=["reports"])


@router.get("/monthly")
async def monthly_report() -> dict[str, str]:
    time.sleep(0.3)  # a blocking client library called from the event loop
    return {"report": "monthly"}
