"""JSON bodies cost what their size allows, never more: nesting is bounded, errors quote an excerpt.

- :class:`JsonLimitedRoute` (the routers' ``route_class``) answers 400 to a JSON body nested deeper
  than ``max_json_depth`` before it is parsed: the app's bodies are flat, while Python's parser and
  what walks its result (pydantic, ``jsonable_encoder``) recurse once per level, up to the
  interpreter's recursion limit.
- :func:`validation_error` is FastAPI's 422 ``{"detail": [...]}`` with each error's ``input`` cut to
  an excerpt: FastAPI's own handler sends the whole input back, megabytes included. An input whose
  JSON is at most :data:`EXCERPT_CHARS` long is sent as it is, so small errors look as usual.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Coroutine, Iterator
from itertools import accumulate
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

EXCERPT_CHARS = 100
TRUNCATED = "... (truncated)"

_ALL_BUT_QUOTES_AND_BRACKETS = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_ALL_BUT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the JSON text ``body`` nests arrays and objects more than ``limit`` deep.

    Escapes and strings are dropped, every opening bracket becomes +1 and every closing one -1, and
    the running sum is the depth: C-speed passes over the body, none of them recursive, all cheaper
    than parsing it. Text that is not JSON may read either way; the parser then says what is wrong.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    if b'"' in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")  # escapes, so that every quote delimits
        body = b"".join(body.translate(None, _ALL_BUT_QUOTES_AND_BRACKETS).split(b'"')[::2])
    steps = body.translate(_STEPS, _ALL_BUT_BRACKETS)
    if b"\x01" * (limit + 1) in steps:
        return True
    return max(accumulate(array("b", steps)), default=0) > limit


class _JsonLimitedRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            limit: int = self.app.state.settings.max_json_depth
            if nested_deeper_than(await self.body(), limit):
                raise HTTPException(400, f"the JSON body is nested deeper than {limit} levels")
        return await super().json()


class JsonLimitedRoute(APIRoute):
    """An APIRoute whose JSON body may nest at most ``app.state.settings.max_json_depth`` levels."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            return await handler(_JsonLimitedRequest(request.scope, request.receive))

        return limited


def _scalar(value: Any, limit: int) -> str:
    if isinstance(value, bytes):
        value = value[: limit + 1].decode("utf-8", "replace")
    if isinstance(value, str):
        return json.dumps(value[: limit + 1])
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(str(value)[: limit + 1])


_END = object()


def json_excerpt(value: Any, limit: int = EXCERPT_CHARS) -> tuple[str, bool]:
    """The JSON of ``value`` up to ``limit`` characters, and whether that is all of it.

    Built piece by piece and stopped at the limit, without recursion: the cost depends on ``limit``
    only, never on how large or deep ``value`` is.
    """
    pieces: list[str] = []
    size = 0
    open_containers: list[tuple[Iterator[Any], str, bool]] = []  # items left, closing bracket, a dict
    item = value
    while True:
        if isinstance(item, dict):
            piece = "{"
            open_containers.append((iter(item.items()), "}", True))
        elif isinstance(item, list | tuple):
            piece = "["
            open_containers.append((iter(item), "]", False))
        else:
            piece = _scalar(item, limit)
        pieces.append(piece)
        size += len(piece)
        # the next value, closing the containers that have none left
        while open_containers and size <= limit:
            items, closing, is_dict = open_containers[-1]
            following: Any = next(items, _END)
            if following is _END:
                open_containers.pop()
                pieces.append(closing)
                size += 1
                continue
            separator = "" if pieces[-1] in ("[", "{") else ", "
            if is_dict:
                key, following = following
                separator += _scalar(str(key), limit) + ": "
            pieces.append(separator)
            size += len(separator)
            item = following
            break
        else:
            text = "".join(pieces)
            return (text, True) if size <= limit else (text[:limit], False)


def short_input(value: Any) -> Any:
    """``value`` itself when its JSON fits in :data:`EXCERPT_CHARS`, else an excerpt of that JSON."""
    text, whole = json_excerpt(value)
    return value if whole else text + TRUNCATED


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422 for a :class:`RequestValidationError`, each ``input`` cut to an excerpt."""
    if not isinstance(error, RequestValidationError):
        raise error  # registered for RequestValidationError only
    errors = [
        {**item, "input": short_input(item["input"])} if "input" in item else item for item in error.errors()
    ]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)
