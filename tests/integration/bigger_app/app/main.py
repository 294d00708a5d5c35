"""FastAPI's "Bigger Applications - Multiple Files" layout (the tutorial's app, with the query-token
dependency left out and a blocking reports router added)."""

from fastapi import Depends, FastAPI

from .dependencies import get_token_header
from .internal import admin
from .routers import items, reports, users

app = FastAPI()


app.include_router(users.router)
app.include_router(items.router)
app.include_router(reports.router)
app.include_router(
    admin.router,
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(get_token_header)],
    responses={418: {"description": "I'm a teapot"}},
)


@app.get("/")
async def root() -> dict[str, str]:
    return {"message": "Hello Bigger Applications!"}
