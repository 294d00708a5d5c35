"""The reference app's routes, one module per concern."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Problem(BaseModel):
    """The body of every error the app raises itself: ``{"detail": "what went wrong"}``."""

    detail: str


def problem(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    """An OpenAPI ``responses`` entry for an error answered with a :class:`Problem`."""
    return {status: {"model": Problem, "description": description}}


# FastAPI answers 400 when a body cannot be decoded at all (not UTF-8), 422 when it is not valid JSON;
# the app answers 400 to JSON nested too deep and 413 to a body too large (app/json_limits.py,
# app/body_limit.py).
UNREADABLE_BODY = {
    **problem(400, "The body could not be read, or its JSON nests deeper than ASYNCPROOF_MAX_JSON_DEPTH"),
    **problem(413, "The body is larger than ASYNCPROOF_MAX_BODY_BYTES"),
}
