"""The reference app's uvicorn protocol: a bound on the request head, and a drain that resets nothing.

**The request head.**
uvicorn's h11 protocol refuses a request head (request line and headers) longer than
``h11_max_incomplete_event_size`` (16 KiB by default) with a 400. Its httptools protocol, the one
``uvicorn[standard]`` runs, takes any size: a 1 MB header is buffered and handed to the app. Gunicorn's
``limit_request_line``, ``limit_request_fields`` and ``limit_request_field_size`` bind Gunicorn's own
parser only; a UvicornWorker parses with uvicorn and ignores them.

:class:`HttpToolsProtocol` applies uvicorn's ``h11_max_incomplete_event_size`` to httptools: a head
that grows past it is answered 431 and the connection closed, with at most one socket read past the
limit buffered. ``uvicorn --http asyncproof.app.protocol:HttpToolsProtocol
--h11-max-incomplete-event-size N`` runs it; :class:`UvicornWorker` is Gunicorn's worker with it.
Its methods call ``super()``, so it combines with other subclasses of uvicorn's protocol
(``class Protocol(HttpToolsProtocol, OtherHttpToolsProtocol)``).
"""

from __future__ import annotations

import json
from typing import Any

import uvicorn_worker  # type: ignore[import-untyped]
from uvicorn.config import Config
from uvicorn.protocols.http import httptools_impl

# What uvicorn's h11 protocol enforces when the option is not set (h11's default).
DEFAULT_MAX_HEAD_BYTES = 16 * 1024
DRAIN_IDLE_SECONDS = 10.0


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        limit = config.h11_max_incomplete_event_size
        self.max_head_bytes = DEFAULT_MAX_HEAD_BYTES if limit is None else limit
        self.in_head = True  # between a request's first byte and the end of its headers
        self.head_bytes = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Counted after parsing: a read that ends the head may carry a body too, which is not head.
        # A read that leaves the head unfinished is all head (bar the end of a pipelined request).
        if self.in_head and not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > self.max_head_bytes:
                self.refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True
        self.head_bytes = 0

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close, then closed

    draining = False

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # idle: the proxy closes it
            self.draining = True
            self.loop.call_later(DRAIN_IDLE_SECONDS, self._close_if_idle)
        else:  # a response in progress goes out with Connection: close, as uvicorn does
            super().shutdown()

    def _close_if_idle(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def refuse_head(self) -> None:
        message = f"request line and headers larger than {self.max_head_bytes} bytes"
        self.logger.warning("Request refused: %s.", message)
        body = json.dumps({"detail": message}).encode()
        head = [httptools_impl.STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()


class UvicornWorker(uvicorn_worker.UvicornWorker):  # type: ignore[misc]
    """uvicorn_worker's Gunicorn worker with :class:`HttpToolsProtocol`; a subclass sets the head
    limit with ``CONFIG_KWARGS["h11_max_incomplete_event_size"]``."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": HttpToolsProtocol}
