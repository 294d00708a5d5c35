from __future__ import annotations

import asyncio
import json
import logging
import random
import string
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, BackgroundTasks, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route, Router
from starlette.staticfiles import StaticFiles

from asyncproof import monitoring
from asyncproof.monitoring.contract import CLIENT_CLOSED_REQUEST, OTHER_METHOD, UNMATCHED_ROUTE
from asyncproof.monitoring.routes import ROUTER_SETS_ROUTE
from tests.monitoring.helpers import client_for, requests_seen, series

pytestmark = pytest.mark.anyio


def make_app(**options: Any) -> tuple[FastAPI, monitoring.Instrumentation]:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.post("/items")
    async def create_item() -> dict[str, str]:
        return {"status": "created"}

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(status_code=404, detail="no such thing")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app, monitoring.instrument(app, registry=CollectorRegistry(), **options)


async def test_requests_are_counted_by_route_template_method_and_status() -> None:
    app, instr = make_app()
    async with client_for(app) as client:
        for item in range(5):
            assert (await client.get(f"/items/{item}")).status_code == 200
        assert (await client.post("/items")).status_code == 200
        assert (await client.get("/missing")).status_code == 404
        assert (await client.get("/items/not-a-number")).status_code == 422

    def seen(method: str, route: str, status: str) -> float:
        return requests_seen(
            instr, http_request_method=method, http_route=route, http_response_status_code=status
        )

    assert seen("GET", "/items/{item_id}", "200") == 5
    assert seen("POST", "/items", "200") == 1
    assert seen("GET", "/missing", "404") == 1
    assert seen("GET", "/items/{item_id}", "422") == 1
    raw = [s["http_route"] for s in series(instr.registry, "http_server_request_duration_seconds_count")]
    assert not any(route.startswith("/items/") and "{" not in route for route in raw)


async def test_requests_between_flushes_are_all_counted() -> None:
    app, instr = make_app()
    async with client_for(app) as client:
        for round_number in range(1, 4):
            for item in range(10):
                await client.get(f"/items/{item}")
            labels = {"http_request_method": "GET", "http_route": "/items/{item_id}"}
            assert requests_seen(instr, **labels, http_response_status_code="200") == 10 * round_number


async def test_unhandled_exception_is_recorded_as_500_and_reraised() -> None:
    app, instr = make_app()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(RuntimeError, match="boom"):
            await client.get("/boom")
    assert (
        requests_seen(instr, http_request_method="GET", http_route="/boom", http_response_status_code="500")
        == 1
    )


async def test_random_paths_and_junk_methods_share_one_series_each() -> None:
    app, instr = make_app()
    rng = random.Random(7)
    async with client_for(app) as client:
        for _ in range(300):
            path = "/" + "".join(rng.choices(string.ascii_letters + string.digits, k=12))
            assert (await client.get(path)).status_code == 404
        for method in ("BREW", "PROPFIND", "FOO", "get2"):
            await client.request(method, "/items/1")
    labels = series(instr.registry, "http_server_request_duration_seconds_count")
    assert {(s["http_request_method"], s["http_route"]) for s in labels} == {
        ("GET", UNMATCHED_ROUTE),
        (OTHER_METHOD, "/items/{item_id}"),
    }
    assert (
        requests_seen(
            instr, http_request_method="GET", http_route=UNMATCHED_ROUTE, http_response_status_code="404"
        )
        == 300
    )
    # the in-flight gauge: one series per method seen, each back to zero, none for unseen methods
    active = series(instr.registry, "http_server_active_requests")
    assert sorted(s["http_request_method"] for s in active) == ["GET", OTHER_METHOD]
    assert (
        instr.registry.get_sample_value("http_server_active_requests", {"http_request_method": OTHER_METHOD})
        == 0
    )


async def test_duration_ends_at_last_body_byte_not_after_background_tasks() -> None:
    app, instr = make_app()
    done = asyncio.Event()

    @app.post("/report")
    async def report(background: BackgroundTasks) -> dict[str, str]:
        async def slow() -> None:
            await asyncio.sleep(0.5)
            done.set()

        background.add_task(slow)
        return {"status": "accepted"}

    async with client_for(app) as client:
        assert (await client.post("/report")).status_code == 200
    assert done.is_set()
    instr.recorder.flush()
    labels = {"http_request_method": "POST", "http_route": "/report", "http_response_status_code": "200"}
    total = instr.registry.get_sample_value("http_server_request_duration_seconds_sum", labels)
    assert total is not None
    assert total < 0.25


async def test_streaming_response_is_timed_until_its_last_chunk() -> None:
    app, instr = make_app()

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            for index in range(3):
                await asyncio.sleep(0.1)
                yield f"chunk {index}\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    async with client_for(app) as client:
        response = await client.get("/stream")
        assert response.text.count("chunk") == 3
    instr.recorder.flush()
    labels = {"http_request_method": "GET", "http_route": "/stream", "http_response_status_code": "200"}
    total = instr.registry.get_sample_value("http_server_request_duration_seconds_sum", labels)
    assert total is not None
    assert total >= 0.3


async def test_client_disconnect_before_response_is_recorded_as_499() -> None:
    app, instr = make_app()

    @app.get("/wait")
    async def wait(request: Request) -> dict[str, str]:
        while not await request.is_disconnected():
            await asyncio.sleep(0.01)
        return {"status": "nobody is listening"}

    messages = [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if len(messages) > 1 else messages[0]

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/wait",
        "raw_path": b"/wait",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    status = str(CLIENT_CLOSED_REQUEST)
    assert (
        requests_seen(instr, http_request_method="GET", http_route="/wait", http_response_status_code=status)
        == 1
    )


async def test_active_requests_count_requests_in_flight() -> None:
    app, instr = make_app()
    entered = asyncio.Event()
    release = asyncio.Event()

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        entered.set()
        await release.wait()
        return {}

    async with client_for(app) as client:
        pending = asyncio.ensure_future(client.get("/slow"))
        await entered.wait()
        instr.recorder.flush()
        assert (
            instr.registry.get_sample_value("http_server_active_requests", {"http_request_method": "GET"})
            == 1
        )
        release.set()
        await pending
    instr.recorder.flush()
    assert instr.registry.get_sample_value("http_server_active_requests", {"http_request_method": "GET"}) == 0


async def test_routes_without_a_template_are_labelled_unmatched_and_leave_nothing_in_flight() -> None:
    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    # Starlette's Host sets scope["route"] to itself, and a Host has no path template
    app = Starlette(routes=[Host("testserver", app=Router([Route("/ok", ok)]))])
    instr = monitoring.instrument(app, registry=CollectorRegistry())
    async with client_for(app) as client:
        assert (await client.get("/ok")).status_code == 200
        assert (await client.get("/nope")).status_code == 404
    assert (
        requests_seen(instr, http_request_method="GET", http_route="/ok", http_response_status_code="200")
        == 1
    )
    assert (
        requests_seen(
            instr, http_request_method="GET", http_route=UNMATCHED_ROUTE, http_response_status_code="404"
        )
        == 1
    )
    assert instr.registry.get_sample_value("http_server_active_requests", {"http_request_method": "GET"}) == 0


async def test_a_request_stays_in_flight_while_its_background_tasks_run() -> None:
    # as OpenTelemetry's ASGI instrumentation counts it: the worker is still busy with it
    app, instr = make_app()
    started, release = asyncio.Event(), asyncio.Event()

    @app.post("/report")
    async def report(background: BackgroundTasks) -> dict[str, str]:
        async def work() -> None:
            started.set()
            await release.wait()

        background.add_task(work)
        return {"status": "accepted"}

    def in_flight() -> float | None:
        instr.recorder.flush()
        return instr.registry.get_sample_value("http_server_active_requests", {"http_request_method": "POST"})

    async with client_for(app) as client:
        pending = asyncio.ensure_future(client.post("/report"))
        await started.wait()
        assert in_flight() == 1
        release.set()
        assert (await pending).status_code == 200
    assert in_flight() == 0


async def test_access_log_writes_one_json_line_per_request_with_its_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = make_app(access_log=True, request_id_header="X-Request-ID")
    formatter, request_ids = monitoring.JsonFormatter(), monitoring.RequestIdFilter()
    logger = logging.getLogger("asyncproof.access")
    logger.addFilter(request_ids)  # as a logging config would: the id is taken when the line is logged
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            async with client_for(app) as client:
                ok = await client.get("/items/7", headers={"X-Request-ID": "req-7"})
                missing = await client.get("/no/such/path")
    finally:
        logger.removeFilter(request_ids)
    lines = [
        json.loads(formatter.format(record))
        for record in caplog.records
        if record.name == "asyncproof.access"
    ]
    assert [(line["http_route"], line["http_response_status_code"]) for line in lines] == [
        ("/items/{item_id}", 200),
        (UNMATCHED_ROUTE, 404),
    ]
    assert lines[0]["request_id"] == "req-7" == ok.headers["x-request-id"]
    assert lines[1]["request_id"] == missing.headers["x-request-id"]
    assert lines[1]["url_path"] == "/no/such/path"
    assert all(line["duration_seconds"] >= 0 and line["http_request_method"] == "GET" for line in lines)


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("0123456789abcdef0123456789abcdef", True),  # nginx's $request_id
        ("req-42.a_b:c", True),
        ("x" * 129, False),
        ("bad id with spaces", False),
        ("evil\u00e9", False),
    ],
)
async def test_incoming_request_id_is_kept_only_when_safe(incoming: str, kept: bool) -> None:
    app, _ = make_app(request_id_header="X-Request-ID")
    seen: list[str | None] = []

    @app.get("/whoami")
    async def whoami() -> dict[str, str | None]:
        seen.append(monitoring.get_request_id())
        return {}

    async with client_for(app) as client:
        response = await client.get("/whoami", headers={"X-Request-ID": incoming.encode("utf-8")})
    returned = response.headers["x-request-id"]
    assert seen == [returned]
    if kept:
        assert returned == incoming
    else:
        assert returned != incoming
        assert len(returned) == 32
        int(returned, 16)


async def test_generated_request_ids_are_unique_and_server_timing_is_set() -> None:
    app, _ = make_app(request_id_header="X-Request-ID", server_timing=True)
    async with client_for(app) as client:
        responses = [await client.get("/items/1") for _ in range(50)]
    assert len({r.headers["x-request-id"] for r in responses}) == 50
    for response in responses:
        name, _, duration = response.headers["server-timing"].partition(";dur=")
        assert name == "app"
        assert float(duration) >= 0


async def test_request_id_and_server_timing_are_opt_in() -> None:
    app, _ = make_app()
    seen: list[str | None] = []

    @app.get("/whoami")
    async def whoami() -> dict[str, str | None]:
        seen.append(monitoring.get_request_id())
        return {}

    async with client_for(app) as client:
        response = await client.get("/whoami", headers={"X-Request-ID": "abc"})
    assert "x-request-id" not in response.headers
    assert "server-timing" not in response.headers
    assert seen == [None]


async def test_metrics_and_health_paths_are_excluded_by_default_and_configurably_included() -> None:
    app, instr = make_app()
    async with client_for(app) as client:
        for path in ("/metrics", "/health", "/health/live", "/health/ready"):
            assert (await client.get(path)).status_code == 200
    assert series(instr.registry, "http_server_request_duration_seconds_count") == []

    app, instr = make_app(exclude_paths=())
    async with client_for(app) as client:
        await client.get("/metrics")
        await client.get("/health/live")
    assert (
        requests_seen(
            instr, http_request_method="GET", http_route="/metrics", http_response_status_code="200"
        )
        == 1
    )
    assert (
        requests_seen(
            instr, http_request_method="GET", http_route="/health/live", http_response_status_code="200"
        )
        == 1
    )


@pytest.mark.parametrize("server_root_path", ["", "/proxy"])
async def test_mounted_sub_app_routes_carry_the_mount_prefix(server_root_path: str) -> None:
    # The prefix is what the Mounts added, nested ones included; a root_path set by the server (as
    # `uvicorn --root-path` behind a proxy) is not part of the route.
    async def user(request: Any) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["name"])

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")

    async def files(scope: Any, receive: Any, send: Any) -> None:  # a mounted app without routes
        await PlainTextResponse(scope["path"])(scope, receive, send)

    inner = Starlette(routes=[Mount("/v1", routes=[Route("/users/{name}", user)]), Mount("/files", files)])
    app = Starlette(routes=[Mount("/api", app=inner), Mount("/static", files), Route("/", home)])
    instr = monitoring.instrument(app, registry=CollectorRegistry())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, root_path=server_root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get(f"{server_root_path}/api/v1/users/ann")).text == "ann"
            assert (await client.get(f"{server_root_path}/")).text == "home"
            assert (await client.get(f"{server_root_path}/static/a.css")).status_code == 200
            assert (await client.get(f"{server_root_path}/api/files/b.css")).status_code == 200
    for route in ("/api/v1/users/{name}", "/", "/static", "/api/files"):
        labels = {"http_route": route, "http_response_status_code": "200"}
        assert requests_seen(instr, http_request_method="GET", **labels) == 1, route


async def statuses(app: Any, *paths: str) -> list[int]:
    """The status codes of GET requests to ``paths``, in order, with the app's lifespan run."""
    async with client_for(app) as client:
        return [(await client.get(path)).status_code for path in paths]


def route_counts(instr: monitoring.Instrumentation) -> dict[tuple[str, str], float]:
    """(route, status) -> requests counted, after a flush."""
    instr.recorder.flush()
    return {
        (labels["http_route"], labels["http_response_status_code"]): instr.registry.get_sample_value(
            "http_server_request_duration_seconds_count", labels
        )
        or 0.0
        for labels in series(instr.registry, "http_server_request_duration_seconds_count")
    }


async def test_mount_path_parameters_become_templates_not_series() -> None:
    async def user(request: Any) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["tenant"])

    tenant_app = Starlette(routes=[Route("/users/{name}", user)])
    app = Starlette(routes=[Mount("/t/{tenant}", app=tenant_app)])
    instr = monitoring.instrument(app, registry=CollectorRegistry())
    async with client_for(app) as client:
        for tenant in ("acme", "globex", "initech", "x" * 40):
            assert (await client.get(f"/t/{tenant}/users/ann")).text == tenant
        assert (await client.get("/t/acme/no-such-page")).status_code == 404
    assert route_counts(instr) == {("/t/{tenant}/users/{name}", "200"): 4, (UNMATCHED_ROUTE, "404"): 1}


async def test_routes_of_included_routers_carry_the_include_prefixes() -> None:
    inner = APIRouter(prefix="/items")

    @inner.get("/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    middle = APIRouter()
    middle.include_router(inner, prefix="/shop")
    app = FastAPI()
    app.include_router(middle, prefix="/v1")
    app.include_router(middle, prefix="/v2")  # the same routes under a second prefix
    instr = monitoring.instrument(app, registry=CollectorRegistry())
    assert await statuses(app, "/v1/shop/items/1", "/v1/shop/items/2", "/v2/shop/items/3") == [200] * 3
    assert route_counts(instr) == {
        ("/v1/shop/items/{item_id}", "200"): 2,
        ("/v2/shop/items/{item_id}", "200"): 1,
    }


class Passing:
    """A pure ASGI middleware around a mounted router."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


async def test_route_labels_stay_right_when_a_route_object_is_reached_several_ways() -> None:
    # The middleware remembers a label on a route object that only one path of the app leads to;
    # everything reached two ways (one behind a middleware), shared with another app, or included
    # again after the app started serving must keep getting the label of the path it came by.
    items = APIRouter()

    @items.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    async def user(request: Any) -> PlainTextResponse:
        return PlainTextResponse("user")

    users = Router(routes=[Route("/users/{name}", user)])
    first = FastAPI()
    first.include_router(items, prefix="/v1")
    first.mount("/a", app=users)
    first.mount("/b", app=Passing(users))

    @first.get("/solo/{name}")
    async def solo(name: str) -> str:
        return name

    second = FastAPI()
    second.include_router(items, prefix="/v2")
    first_instr = monitoring.instrument(first, registry=CollectorRegistry())
    second_instr = monitoring.instrument(second, registry=CollectorRegistry())
    async with client_for(first) as client_1, client_for(second) as client_2:
        for i in range(3):
            for path in ("/v1/items/1", "/a/users/x", "/b/users/y", f"/solo/{i}"):
                assert (await client_1.get(path)).status_code == 200, path
            assert (await client_2.get("/v2/items/1")).status_code == 200
        first.include_router(items, prefix="/v3")  # once serving: /v1's label must not stick
        await asyncio.sleep(0.8)  # a flush of the runtime sampler notices the new route list
        for path in ("/v3/items/1", "/v1/items/2", "/v3/items/3"):
            assert (await client_1.get(path)).status_code == 200, path
    assert route_counts(first_instr) == {
        ("/v1/items/{item_id}", "200"): 4,
        ("/v3/items/{item_id}", "200"): 2,
        ("/a/users/{name}", "200"): 3,
        ("/b/users/{name}", "200"): 3,
        ("/solo/{name}", "200"): 3,
    }
    assert route_counts(second_instr) == {("/v2/items/{item_id}", "200"): 3}
    # and the one-path routes were read from the label they carry, not worked out each time
    solo_route = next(route for route in first.routes if getattr(route, "path", "") == "/solo/{name}")
    assert [value for name, value in vars(solo_route).items() if name.startswith("_asyncproof")] == [
        "/solo/{name}"
    ]


async def test_mounts_inside_included_routers_and_hosts_carry_their_templates(tmp_path: Path) -> None:
    async def user(request: Any) -> PlainTextResponse:
        return PlainTextResponse("user")

    (tmp_path / "app.css").write_text("body {}")
    router = APIRouter()
    router.mount("/sub", Starlette(routes=[Route("/u/{name}", user)]))
    router.mount("/static", StaticFiles(directory=tmp_path))
    app = FastAPI()
    app.include_router(router, prefix="/v1")
    app.include_router(router, prefix="/v2")
    # FastAPI before 0.137 leaves a router's Mounts out of include_router: nothing to label there.
    keeps_mounts = any(
        str(getattr(route, "path", "")).startswith("/v1/sub")
        or callable(getattr(route, "effective_route_contexts", None))
        for route in app.routes
    )
    app.mount("/assets", StaticFiles(directory=tmp_path))
    tenants = Router([Mount("/t/{tenant}", routes=[Route("/u/{name}", user)])])
    app.router.routes.append(Host("api.example.com", app=tenants))
    instr = monitoring.instrument(app, registry=CollectorRegistry())
    included = [("/v1/sub/u/ann", 200), ("/v2/sub/u/bob", 200), ("/v1/static/app.css", 200)]
    async with client_for(app) as client:
        for path, status in [
            *(included if keeps_mounts else []),
            ("/assets/app.css", 200),
            ("/assets/missing.css", 404),
        ]:
            assert (await client.get(path)).status_code == status, path
        for tenant in ("acme", "globex"):
            answer = await client.get(f"/t/{tenant}/u/ann", headers={"host": "api.example.com"})
            assert answer.status_code == 200
    expected = {
        ("/assets", "200"): 1,
        ("/assets", "404"): 1,
        ("/t/{tenant}/u/{name}", "200"): 2,
    }
    if keeps_mounts:
        expected |= {("/v1/sub/u/{name}", "200"): 1, ("/v2/sub/u/{name}", "200"): 1, ("/v1/static", "200"): 1}
    assert route_counts(instr) == expected


async def test_a_router_that_fails_to_list_its_routes_does_not_lose_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Route):
        def effective_route_contexts(self) -> list[Any]:
            raise RuntimeError("no contexts today")

    async def user(request: Any) -> PlainTextResponse:
        return PlainTextResponse("user")

    app = Starlette(routes=[Broken("/broken", user), Mount("/t/{tenant}", routes=[Route("/u", user)])])
    instr = monitoring.instrument(app, registry=CollectorRegistry())
    assert await statuses(app, "/t/acme/u") == [200]
    assert instr.registry.get_sample_value("http_server_active_requests", {"http_request_method": "GET"}) == 0
    if ROUTER_SETS_ROUTE:  # the Mount's template is looked up among the routes, which fails here
        assert route_counts(instr) == {("/u", "200"): 1}
        assert "cannot find the Mounts" in caplog.text
    else:  # the whole template is found by matching, which this route does not get in the way of
        assert route_counts(instr) == {("/t/{tenant}/u", "200"): 1}


async def test_a_middleware_added_by_hand_finds_the_mounts_through_the_lifespan() -> None:
    async def user(request: Any) -> PlainTextResponse:
        return PlainTextResponse("user")

    sub = Starlette(routes=[Route("/users/{name}", user)])
    app = Starlette(routes=[Mount("/api/{version}", app=sub), Mount("/admin", app=sub)])
    instr = monitoring.Instrumentation(registry=CollectorRegistry())
    app.add_middleware(monitoring.InstrumentationMiddleware, instrumentation=instr)
    assert await statuses(app, "/api/1/users/ann", "/api/2/users/ann", "/admin/users/bob") == [200] * 3
    assert route_counts(instr) == {
        ("/api/{version}/users/{name}", "200"): 2,
        ("/admin/users/{name}", "200"): 1,
    }


async def test_an_instrumented_app_mounted_elsewhere_labels_its_own_routes() -> None:
    async def user(request: Any) -> PlainTextResponse:
        return PlainTextResponse("user")

    inner = Starlette(routes=[Mount("/api", routes=[Route("/users/{name}", user)])])
    instr = monitoring.instrument(inner, registry=CollectorRegistry())
    outer = Starlette(routes=[Mount("/{site}", app=inner)])
    async with client_for(outer) as client:
        assert (await client.get("/sub/api/users/ann")).text == "user"
        assert (await client.get("/sub/health/live")).status_code == 200  # its built-in endpoints too
        assert (await client.get("/sub/no-such-page")).status_code == 404
        assert (await client.get("/sub/api/users/ann/")).status_code == 307  # redirect_slashes
    assert route_counts(instr) == {
        ("/api/users/{name}", "200"): 1,
        (UNMATCHED_ROUTE, "404"): 1,
        (UNMATCHED_ROUTE, "307"): 1,
    }


async def test_built_in_endpoints_answer_below_a_server_root_path() -> None:
    app, instr = make_app()
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, root_path="/proxy")
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get("/proxy/health/live")).status_code == 200
            metrics = await client.get("/proxy/metrics")
    assert metrics.status_code == 200
    assert "http_server_request_duration_seconds" in metrics.text
    assert series(instr.registry, "http_server_request_duration_seconds_count") == []  # excluded


async def test_a_mounted_route_without_a_template_is_unmatched_and_leaves_nothing_in_flight() -> None:
    class Odd(Route):
        """A route whose path is not a template (a third-party router could do this)."""

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    odd = Odd("/odd", ok)
    odd.path = None  # type: ignore[assignment]
    app = Starlette(routes=[Mount("/m", routes=[odd])])
    instr = monitoring.instrument(app, registry=CollectorRegistry())
    async with client_for(app) as client:
        assert (await client.get("/m/odd")).text == "ok"
    assert route_counts(instr) == {(UNMATCHED_ROUTE, "200"): 1}
    assert instr.registry.get_sample_value("http_server_active_requests", {"http_request_method": "GET"}) == 0


async def test_plain_starlette_app_is_instrumented() -> None:
    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", home)])
    instr = monitoring.instrument(app, registry=CollectorRegistry())
    async with client_for(app) as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
    assert (
        requests_seen(instr, http_request_method="GET", http_route="/", http_response_status_code="200") == 1
    )


async def test_websocket_scopes_pass_through_unrecorded() -> None:
    calls: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    instr = monitoring.Instrumentation(registry=CollectorRegistry())
    middleware = monitoring.InstrumentationMiddleware(inner, instrumentation=instr)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await middleware({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    assert calls == ["websocket"]
    assert series(instr.registry, "http_server_request_duration_seconds_count") == []


def test_instrument_rejects_what_is_not_an_app() -> None:
    with pytest.raises(TypeError, match="FastAPI or Starlette"):
        monitoring.instrument(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "option", [{"metrics_path": "metrics"}, {"health_path": "/health/"}, {"flush_interval": 2}]
)
def test_bad_options_are_refused_with_a_message(option: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        monitoring.instrument(FastAPI(), registry=CollectorRegistry(), **option)
