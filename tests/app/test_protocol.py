"""The request-head limit of app/protocol.py, driven byte by byte through a stand-in transport."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from asyncproof.app.protocol import HttpToolsProtocol
from asyncproof.monitoring.types import Receive, Scope, Send

pytestmark = pytest.mark.anyio

LIMIT = 1024


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def connect(limit: int | None = LIMIT) -> tuple[HttpToolsProtocol, Transport]:
    config = Config(app=ok, h11_max_incomplete_event_size=limit, lifespan="off", log_config=None)
    protocol = HttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


def request(head_bytes: int, body: bytes = b"") -> bytes:
    """A request whose request line and headers are ``head_bytes`` long."""
    head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nX-Pad: " % len(body)
    return head + b"a" * (head_bytes - len(head) - 4) + b"\r\n\r\n" + body


async def answered(transport: Transport) -> bytes:
    for _ in range(100):
        if transport.written:
            break
        await asyncio.sleep(0)
    return transport.written


async def test_a_head_over_the_limit_gets_431_and_the_connection_closes() -> None:
    protocol, transport = connect()
    data = request(10 * LIMIT)
    fed = 0
    while not transport.closed and fed < len(data):
        protocol.data_received(data[fed : fed + 100])
        fed += 100
    assert transport.closed
    assert fed <= LIMIT + 100  # refused at the first read past the limit
    assert transport.written.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert transport.written.endswith(b'{"detail": "request line and headers larger than 1024 bytes"}')
    assert b"connection: close\r\n" in transport.written


async def test_a_head_of_exactly_the_limit_is_served() -> None:
    protocol, transport = connect()
    protocol.data_received(request(LIMIT))
    assert (await answered(transport)).startswith(b"HTTP/1.1 200 OK")


async def test_a_body_read_along_with_the_head_is_not_head() -> None:
    protocol, transport = connect()
    protocol.data_received(request(500, b"b" * 100_000))  # one read: a small head, a large body
    assert (await answered(transport)).startswith(b"HTTP/1.1 200 OK")
    assert not transport.closed


async def test_each_request_on_a_connection_has_its_own_allowance() -> None:
    protocol, transport = connect()
    for _ in range(3):
        transport.written = b""
        for start in range(0, 900, 100):
            protocol.data_received(request(900)[start : start + 100])
        assert (await answered(transport)).startswith(b"HTTP/1.1 200 OK")


async def test_without_the_option_the_limit_is_h11s_16_kib() -> None:
    protocol, _ = connect(limit=None)
    assert protocol.max_head_bytes == 16 * 1024
