"""Bounded request cost, in-process: bodies over the limit get 413 unread, deep JSON 400 unparsed, and
validation errors quote an excerpt of the input, never all of it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from asyncproof.app.body_limit import BodyLimit
from asyncproof.app.json_limits import EXCERPT_CHARS, TRUNCATED, json_excerpt, nested_deeper_than
from asyncproof.app.settings import Settings
from asyncproof.app.work import InlineWorkRequest
from asyncproof.monitoring.types import Message, Scope
from tests.app.helpers import app_client, sample, settings_for

pytestmark = pytest.mark.anyio

MB = 1_000_000


def echo_app(limit: int) -> FastAPI:
    """A small app that reads the whole body and says how long it was, behind a BodyLimit."""
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    app.add_middleware(BodyLimit, max_body_bytes=limit)
    return app


async def chunks(count: int, size: int, pulled: list[int]) -> AsyncIterator[bytes]:
    for _ in range(count):
        pulled.append(size)
        yield b"x" * size


# --- the body limit ---------------------------------------------------------------------------------


async def test_a_declared_body_over_the_limit_is_refused_before_the_app_runs() -> None:
    called: list[Scope] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        called.append(scope)

    async def receive() -> Message:
        raise AssertionError("the body was read")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"20971520")]}
    await BodyLimit(app, max_body_bytes=1000)(scope, receive, send)

    assert called == []
    start, body = sent
    assert start["status"] == 413
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"connection"] == b"close"  # the server stops reading instead of taking the rest in
    assert json.loads(body["body"]) == {"detail": "request body larger than 1000 bytes"}


async def test_a_chunked_body_is_refused_once_past_the_limit_and_not_read_further() -> None:
    pulled: list[int] = []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(echo_app(1000)), base_url="http://t"
    ) as client:
        response = await client.post("/echo", content=chunks(100, 300, pulled))
    assert response.status_code == 413
    assert response.json() == {"detail": "request body larger than 1000 bytes"}
    assert response.headers["connection"] == "close"
    assert sum(pulled) == 1200  # the chunk that passed 1000 bytes was the last one read


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_of_exactly_the_limit_gets_through(chunked: bool) -> None:
    content: Any = chunks(4, 250, []) if chunked else b"x" * 1000
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(echo_app(1000)), base_url="http://t"
    ) as client:
        response = await client.post("/echo", content=content)
    assert response.status_code == 200
    assert response.json() == {"received": 1000}


async def test_a_body_read_where_no_exception_handler_runs_is_refused_by_the_middleware() -> None:
    async def reads_everything(scope: Scope, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await JSONResponse({"read": True})(scope, receive, send)

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(BodyLimit(reads_everything, max_body_bytes=10)), base_url="http://t"
    ) as client:
        response = await client.post("/", content=chunks(3, 8, []))
    assert response.status_code == 413
    assert response.json() == {"detail": "request body larger than 10 bytes"}


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_body_bytes must be 0 or more"):
        BodyLimit(echo_app(0), max_body_bytes=-1)


async def test_the_reference_app_refuses_a_body_over_max_body_bytes_and_counts_the_413(
    tmp_path: Path,
) -> None:
    async with app_client(settings_for(tmp_path, max_body_bytes=1000)) as (client, app):
        refused = await client.post(
            "/work/sync", content=b" " * 1001, headers={"content-type": "application/json"}
        )
        # exactly the limit is read and validated (padded JSON)
        padded = json.dumps({"kind": "disk", "duration_ms": 1}).encode().ljust(1000)
        read = await client.post("/work/sync", content=padded, headers={"content-type": "application/json"})
        assert (
            sample(
                app,
                "http_server_request_duration_seconds_count",
                http_response_status_code="413",
                http_request_method="POST",
                http_route="unmatched",
            )
            == 1
        )  # refused before routing
    assert refused.status_code == 413
    assert refused.json() == {"detail": "request body larger than 1000 bytes"}
    assert refused.headers["x-worker-pid"] == str(os.getpid())
    assert refused.headers["x-request-id"]
    assert read.status_code == 422
    assert read.json()["detail"][0]["loc"] == ["body", "kind"]


# --- validation errors ------------------------------------------------------------------------------


def plain_fastapi_app() -> FastAPI:
    """The same endpoint with FastAPI's own validation handler: small errors must look the same."""
    app = FastAPI()

    @app.post("/work/sync")
    def sync(work: InlineWorkRequest) -> dict[str, str]:
        return {}

    return app


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "disk", "duration_ms": 10},
        {"kind": "io", "duration_ms": -1},
        {"kind": "io", "duration_ms": "soon"},
        {"kind": "io"},
        {"kind": "io", "duration_ms": 10, "colour": ["red", {"shade": 3}]},
        [1, 2, 3],
        "just a string",
    ],
)
async def test_small_validation_errors_are_fastapis_own(tmp_path: Path, body: Any) -> None:
    async with (
        app_client(settings_for(tmp_path)) as (client, _),
        httpx.AsyncClient(transport=httpx.ASGITransport(plain_fastapi_app()), base_url="http://t") as plain,
    ):
        ours = await client.post("/work/sync", json=body)
        theirs = await plain.post("/work/sync", json=body)
    assert ours.status_code == theirs.status_code == 422
    assert ours.json() == theirs.json()


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (json.dumps({"kind": "x" * MB, "duration_ms": 1}), "application/json"),
        (json.dumps([0] * (MB // 3)), "application/json"),
        (json.dumps({"kind": "io", "duration_ms": 1, "notes": ["y" * 1000] * 990}), "application/json"),
        ("z" * MB, "text/plain"),  # not JSON: the input is the raw body
    ],
    ids=["long-string", "long-array", "extra-field", "raw-bytes"],
)
async def test_a_validation_error_on_a_1_mb_body_quotes_only_an_excerpt(
    tmp_path: Path, content: str, content_type: str
) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        response = await client.post("/work/sync", content=content, headers={"content-type": content_type})
    assert response.status_code == 422
    assert len(response.content) < 2000, response.content[:3000]
    errors = response.json()["detail"]
    assert errors
    cut = [
        error for error in errors if isinstance(error["input"], str) and error["input"].endswith(TRUNCATED)
    ]
    assert cut, errors
    for error in cut:
        assert len(error["input"]) == EXCERPT_CHARS + len(TRUNCATED)
        assert {"type", "loc", "msg"} <= error.keys()


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1},
        [1, [2, []], {}],
        None,
        "x" * 10,
        "x" * 30,
        'quotes " and \\ backslashes',
        list(range(100)),
        {"key": {"inner": [True, False, 1.5]}},
        [[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]],
    ],
)
def test_an_excerpt_is_the_start_of_the_inputs_json(value: Any) -> None:
    text = json.dumps(value)
    assert json_excerpt(value, 20) == (text[:20], len(text) <= 20)


def test_a_bytes_input_is_quoted_as_text() -> None:
    assert json_excerpt(b"bytes", 20) == ('"bytes"', True)
    assert json_excerpt(b"\xff" * 50, 20) == (json.dumps("\ufffd" * 50)[:20], False)


def test_an_excerpt_costs_the_same_whatever_the_size_or_depth_of_the_input() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(50_000):  # far deeper than Python's recursion limit
        inner.append([])
        inner = inner[0]
    wide = {str(n): n for n in range(200_000)}
    started = time.perf_counter()
    assert json_excerpt(deep, 100) == ("[" * 100, False)
    assert json_excerpt(wide, 100)[1] is False
    assert time.perf_counter() - started < 0.05


# --- JSON nesting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "limit", "deeper"),
    [
        (b'{"kind": "io"}', 1, False),
        (b"[[]]", 1, True),
        (b"[[]]", 2, False),
        (b"[1, [2, [3]], [4]]", 2, True),
        (b"[1, [2, [3]], [4]]", 3, False),
        (b'{"a": [{"b": [1]}]}', 3, True),
        (b'{"a": [{"b": [1]}]}', 4, False),
        (b"[[], [], [], [], []]", 2, False),  # wide, not deep
        (b'["[[[[", "{{{{"]', 1, False),  # brackets inside strings do not nest
        (b'["\\"[[[[", "\\\\", [[]]]', 3, False),  # nor after escaped quotes and backslashes
        (b'["\\"[[[[", "\\\\", [[]]]', 2, True),
        (b"[" * 1000 + b"]" * 1000, 999, True),
        (b"[" * 1000 + b"]" * 1000, 1000, False),
    ],
)
def test_nested_deeper_than(body: bytes, limit: int, deeper: bool) -> None:
    assert nested_deeper_than(body, limit) is deeper


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 33 + b"]" * 33,
        b'{"kind": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b', "duration_ms": 1}',
        b"[" * (MB // 2) + b"]" * (MB // 2),  # a million bytes, half a million levels
        b"[" * MB,  # not even JSON
    ],
    ids=["33-levels", "deep-field", "500k-levels", "unclosed"],
)
async def test_json_nested_deeper_than_max_json_depth_is_refused_unparsed(
    tmp_path: Path, body: bytes
) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        started = time.perf_counter()
        response = await client.post("/work/sync", content=body, headers={"content-type": "application/json"})
        elapsed = time.perf_counter() - started
    assert response.status_code == 400
    assert response.json() == {"detail": "the JSON body is nested deeper than 32 levels"}
    assert elapsed < 0.5


@pytest.mark.parametrize(
    "body",
    [b"[" * 32 + b"]" * 32, json.dumps({"kind": "[" * 1000, "duration_ms": 1}).encode()],
    ids=["32-levels", "brackets-in-a-string"],
)
async def test_json_within_max_json_depth_is_validated_as_usual(tmp_path: Path, body: bytes) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        response = await client.post("/work/sync", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] in {"model_attributes_type", "literal_error"}


# --- settings ---------------------------------------------------------------------------------------


def test_the_limits_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.max_body_bytes, defaults.max_header_bytes, defaults.max_json_depth) == (
        1_048_576,
        16_384,
        32,
    )
    monkeypatch.setenv("ASYNCPROOF_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("ASYNCPROOF_MAX_HEADER_BYTES", "4096")
    monkeypatch.setenv("ASYNCPROOF_MAX_JSON_DEPTH", "8")
    settings = Settings()
    assert (settings.max_body_bytes, settings.max_header_bytes, settings.max_json_depth) == (2048, 4096, 8)
