"""``instrument()`` in real projects: many apps per process, the app's own routes win, faults of ours
never reach the response."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import warnings

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from asyncproof import monitoring
from asyncproof.monitoring import routes as route_labels
from asyncproof.monitoring.contract import UNMATCHED_ROUTE
from asyncproof.monitoring.recorder import HttpRecorder, _Series
from asyncproof.monitoring.runtime import RuntimeSampler
from tests.monitoring.helpers import client_for, requests_seen

pytestmark = pytest.mark.anyio


def create_app() -> FastAPI:
    """An app factory as projects write them: one app per call, instrumented with defaults."""
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    monitoring.instrument(app)
    return app


def test_a_factory_called_three_times_with_defaults_counts_every_app_in_the_shared_series() -> None:
    # The global registry, as a user's process has it: in a process of its own.
    code = textwrap.dedent(
        """
        import asyncio, httpx
        from tests.monitoring.test_instrumentation import create_app

        async def main():
            apps = [create_app() for _ in range(3)]
            for number, app in enumerate(apps, start=1):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    for item in range(number):
                        assert (await client.get(f"/items/{item}")).status_code == 200
            for app in apps:  # every app's /metrics shows the requests of all three
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    text = (await client.get("/metrics")).text
                line = [l for l in text.splitlines()
                        if l.startswith("http_server_request_duration_seconds_count{")
                        and 'http_route="/items/{item_id}"' in l]
                print(line[0].rsplit(" ", 1)[1])

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["6.0", "6.0", "6.0"]


async def test_apps_sharing_a_registry_share_metrics_and_recorder() -> None:
    registry = CollectorRegistry()
    first, second = Starlette(), Starlette()
    one = monitoring.instrument(first, registry=registry)
    two = monitoring.instrument(second, registry=registry)
    assert one.metrics is two.metrics
    assert one.recorder is two.recorder
    assert monitoring.Metrics(registry) is one.metrics  # the app's own code gets the same one


def test_another_histogram_layout_on_a_used_registry_says_to_pass_a_registry() -> None:
    registry = CollectorRegistry()
    monitoring.instrument(Starlette(), registry=registry)
    with pytest.raises(ValueError, match="registry= a CollectorRegistry of its own"):
        monitoring.instrument(Starlette(), registry=registry, buckets=(0.1, 1.0))


def test_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="metric_path"):
        monitoring.instrument(Starlette(), metric_path="/m")


def test_options_object_and_keywords_are_the_same_call() -> None:
    registry = CollectorRegistry()
    options = monitoring.Options(registry=registry, metrics_path="/internal/metrics")
    instrumentation = monitoring.instrument(Starlette(), options)
    assert instrumentation.options.metrics_path == "/internal/metrics"
    with pytest.raises(TypeError, match="not both"):
        monitoring.instrument(Starlette(), options, access_log=True)


# -- the app's own routes win ------------------------------------------------------------------


def own_health_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"mine": "yes"}

    return app


async def test_the_apps_own_health_route_answers_and_one_warning_names_the_option() -> None:
    app = own_health_app()
    instr = monitoring.instrument(app, registry=CollectorRegistry())
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        async with client_for(app) as client:
            for _ in range(3):
                response = await client.get("/health")
                assert response.json() == {"mine": "yes"}
            assert (await client.get("/health/live")).json()["status"] == "pass"  # ours still there
    assert [w.category for w in warned] == [monitoring.RouteConflictWarning]
    assert "own route at /health" in str(warned[0].message)
    assert "health_path=" in str(warned[0].message)
    # The app's route is the app's: counted like any other.
    assert requests_seen(instr, http_request_method="GET", http_route="/health") == 3


async def test_the_notice_never_fails_a_request_where_warnings_are_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = own_health_app()
    monitoring.instrument(app, registry=CollectorRegistry())
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="asyncproof"):
        warnings.simplefilter("error")  # as test suites configure it
        async with client_for(app) as client:
            assert (await client.get("/health")).json() == {"mine": "yes"}
    assert [r.levelno for r in caplog.records if "own route at /health" in r.getMessage()] == [logging.INFO]


async def test_moving_ours_with_health_path_serves_both() -> None:
    app = own_health_app()
    monitoring.instrument(app, registry=CollectorRegistry(), health_path="/internal/health")
    async with client_for(app) as client:
        assert (await client.get("/health")).json() == {"mine": "yes"}
        assert (await client.get("/internal/health/ready")).status_code == 200


async def test_routes_added_after_instrument_and_through_routers_win_too() -> None:
    app = FastAPI()
    monitoring.instrument(app, registry=CollectorRegistry())
    async with client_for(app) as client:
        assert "http_server_request_duration_seconds" in (await client.get("/metrics")).text
        router = APIRouter()

        @router.get("/metrics")
        async def metrics() -> PlainTextResponse:
            return PlainTextResponse("app metrics")

        app.include_router(router)  # after instrument() and after a request
        assert (await client.get("/metrics")).text == "app metrics"


async def test_included_router_prefix_and_mounts_are_searched() -> None:
    router = APIRouter()

    @router.get("/live")
    async def live() -> dict[str, str]:
        return {"router": "live"}

    app = FastAPI()
    app.include_router(router, prefix="/health")
    sub = Starlette(routes=[Route("/ready", lambda request: JSONResponse({"mounted": "ready"}))])
    app.mount("/health", sub)
    monitoring.instrument(app, registry=CollectorRegistry())
    async with client_for(app) as client:
        assert (await client.get("/health/live")).json() == {"router": "live"}
        assert (await client.get("/health/ready")).json() == {"mounted": "ready"}
        assert (await client.get("/health")).json()["status"] == "pass"  # nobody else has it


async def test_a_catch_all_route_does_not_take_our_endpoints() -> None:
    app = FastAPI()

    @app.get("/{path:path}")
    async def spa(path: str) -> PlainTextResponse:
        return PlainTextResponse("index.html")

    monitoring.instrument(app, registry=CollectorRegistry())
    async with client_for(app) as client:
        assert (await client.get("/health/live")).json()["status"] == "pass"
        assert (await client.get("/anything")).text == "index.html"


# -- faults of ours never reach the response -----------------------------------------------------


def fault_app() -> tuple[Starlette, monitoring.Instrumentation]:
    async def item(request: object) -> Response:
        return Response(b"\x00exact bytes\xff", status_code=201, headers={"x-app": "1"})

    app = Starlette(routes=[Mount("/v1", routes=[Route("/item", item)]), Route("/plain", item)])
    return app, monitoring.instrument(app, registry=CollectorRegistry())


def boom(*args: object, **kwargs: object) -> object:
    raise RuntimeError("injected fault")


async def test_a_fault_in_route_labelling_keeps_the_response_and_counts_it_unmatched(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app, instr = fault_app()
    monkeypatch.setattr(route_labels.RouteLabels, "mounted", boom)
    async with client_for(app) as client:
        for _ in range(3):
            response = await client.get("/v1/item")
            assert response.status_code == 201
            assert response.content == b"\x00exact bytes\xff"
            assert response.headers["x-app"] == "1"
    assert requests_seen(instr, http_route=UNMATCHED_ROUTE, http_response_status_code="201") == 3
    logged = [
        r for r in caplog.records if r.levelno == logging.ERROR and "could not record" in r.getMessage()
    ]
    assert len(logged) == 1  # once per distinct error


async def test_a_fault_in_recording_falls_back_to_counting_as_unmatched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, instr = fault_app()
    add_series = _Series.__missing__

    def fail_for_routes(series: _Series, key: tuple[object, ...]) -> object:
        if key[1] != UNMATCHED_ROUTE:
            raise RuntimeError("boom")
        return add_series(series, key)

    monkeypatch.setattr(_Series, "__missing__", fail_for_routes)
    async with client_for(app) as client:
        response = await client.get("/plain")
        assert (response.status_code, response.content) == (201, b"\x00exact bytes\xff")
    assert requests_seen(instr, http_route=UNMATCHED_ROUTE, http_response_status_code="201") == 1


async def test_a_fault_in_the_flush_or_the_sampler_leaves_the_app_and_the_scrape_answering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, _ = fault_app()
    monkeypatch.setattr(HttpRecorder, "flush", boom)
    monkeypatch.setattr(RuntimeSampler, "start", boom)
    async with client_for(app) as client:  # the lifespan starts although our sampler cannot
        assert (await client.get("/plain")).status_code == 201
        scrape = await client.get("/metrics")
        assert scrape.status_code == 200
        assert "http_server_request_duration_seconds" in scrape.text


def test_a_registry_and_its_metrics_go_together() -> None:
    import gc
    import weakref

    registry = CollectorRegistry()
    monitoring.instrument(Starlette(), registry=registry)
    gone = weakref.ref(registry)
    del registry
    gc.collect()
    assert gone() is None  # app factories in a long test run do not pile up registries
