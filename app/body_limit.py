"""Request bodies over a size answer 413 without being read.

A ``Content-Length`` over the limit is refused before the app runs; a chunked body is counted as the
app reads it and refused once it passes the limit. The 413 is ``{"detail": ...}`` like the app's other
errors, with ``Connection: close``: the server then stops reading the connection instead of taking in
the rest of a body nobody will use.
"""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from asyncproof.monitoring.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes", headers={"Connection": "close"})


def content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            # The server has refused a malformed one already; a value that is still odd reads as absent.
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """Answers 413 to a request whose body is over ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be 0 or more, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = content_length(scope)
        if declared is not None:
            # The server never passes on more than Content-Length announced: nothing left to count.
            if declared > limit:
                await refuse(scope, receive, send, limit)
            else:
                await self.app(scope, receive, send)
            return

        received = 0
        started = False

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException: the app's own handler answers it, inside the metrics middleware.
                    raise BodyTooLarge(limit)
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive_counted, send_tracked)
        except BodyTooLarge:
            if started:
                raise
            # read where no exception handler runs (a middleware): answered here instead
            await refuse(scope, receive, send, limit)


async def refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    error = BodyTooLarge(limit)
    response = JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)
    await response(scope, receive, send)
