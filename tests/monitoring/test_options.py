"""What users of the peer libraries ask for: buckets, extra labels, regex exclusions, BackgroundTasks
and the in-flight gauge; and the validation of every option."""

from __future__ import annotations

import anyio
import pytest
from fastapi import BackgroundTasks, FastAPI
from prometheus_client import CollectorRegistry

from asyncproof import monitoring
from asyncproof.monitoring.options import OTHER_VALUE
from tests.monitoring.helpers import client_for, requests_seen

pytestmark = pytest.mark.anyio


def make_app(**options: object) -> tuple[FastAPI, monitoring.Instrumentation]:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/internal/debug/{what}")
    async def debug(what: str) -> dict[str, str]:
        return {"what": what}

    return app, monitoring.instrument(app, registry=CollectorRegistry(), **options)


async def test_custom_buckets_shape_the_request_histogram() -> None:
    app, instr = make_app(buckets=(0.5, 2.0))
    async with client_for(app) as client:
        await client.get("/items/1")
    instr.recorder.flush()
    bounds = {
        s.labels["le"]
        for m in instr.registry.collect()
        for s in m.samples
        if s.name == "http_server_request_duration_seconds_bucket"
    }
    assert bounds == {"0.5", "2.0", "+Inf"}


async def test_a_header_label_keeps_allowed_values_and_maps_the_rest_to_other() -> None:
    tenant = monitoring.from_header("X-Tenant", allowed_values=["acme", "globex"], name="tenant")
    app, instr = make_app(extra_labels=[tenant])
    async with client_for(app) as client:
        await client.get("/items/1", headers={"x-tenant": "acme"})
        await client.get("/items/1", headers={"x-tenant": "acme"})
        for value in ("evil-1", "evil-2", "evil-3"):
            await client.get("/items/1", headers={"x-tenant": value})
        await client.get("/items/1")  # no header at all
    assert requests_seen(instr, http_route="/items/{item_id}", tenant="acme") == 2
    assert requests_seen(instr, http_route="/items/{item_id}", tenant=OTHER_VALUE) == 4
    tenants = {
        s.labels["tenant"]
        for m in instr.registry.collect()
        for s in m.samples
        if s.name == "http_server_request_duration_seconds_count"
    }
    assert tenants == {"acme", OTHER_VALUE}  # bounded, whatever clients send


async def test_a_callable_label_reads_the_scope_and_a_failing_one_gives_other() -> None:
    def version(scope: dict[str, object]) -> str:
        path = str(scope["path"])
        if path.endswith("/0"):
            raise RuntimeError("a broken label function")
        return "odd" if int(path.rsplit("/", 1)[1]) % 2 else "even"

    app, instr = make_app(
        extra_labels=[monitoring.from_scope("parity", version, allowed_values={"odd", "even"})]
    )
    async with client_for(app) as client:
        for item in range(5):
            assert (await client.get(f"/items/{item}")).status_code == 200
    assert requests_seen(instr, parity="odd") == 2
    assert requests_seen(instr, parity="even") == 2
    assert requests_seen(instr, parity=OTHER_VALUE) == 1


async def test_regex_exclusions_skip_whole_matching_paths_only() -> None:
    app, instr = make_app(exclude_patterns=[r"/internal/.*"])
    async with client_for(app) as client:
        assert (await client.get("/internal/debug/x")).status_code == 200
        assert (await client.get("/items/1")).status_code == 200
    assert requests_seen(instr, http_route="/internal/debug/{what}") == 0
    assert requests_seen(instr, http_route="/items/{item_id}") == 1


@pytest.mark.parametrize(("in_flight", "expected"), [(True, 1.0), (False, 0.0)])
async def test_background_tasks_count_as_in_flight_only_when_asked(in_flight: bool, expected: float) -> None:
    release = anyio.Event()
    running = anyio.Event()

    async def work() -> None:
        running.set()
        await release.wait()

    app = FastAPI()

    @app.post("/report")
    async def report(background: BackgroundTasks) -> dict[str, str]:
        background.add_task(work)
        return {"status": "accepted"}

    instr = monitoring.instrument(app, registry=CollectorRegistry(), background_tasks_in_flight=in_flight)

    def active() -> float:
        instr.recorder.flush()
        return (
            instr.registry.get_sample_value("http_server_active_requests", {"http_request_method": "POST"})
            or 0
        )

    async with client_for(app) as client, anyio.create_task_group() as tasks:
        tasks.start_soon(client.post, "/report")
        await running.wait()  # the response is sent, the background task runs
        assert active() == expected
        release.set()
    assert active() == 0
    assert requests_seen(instr, http_route="/report") == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"metrics_path": "metrics"}, "metrics_path must start with '/'"),
        ({"health_path": "/health/"}, "health_path must start with '/'"),
        ({"flush_interval": 5}, "flush_interval"),
        ({"buckets": (1.0, 0.5)}, "buckets must be increasing"),
        ({"buckets": ()}, "buckets must be increasing"),
        ({"extra_labels": [monitoring.from_scope("a", str, allowed_values={"x"})] * 2}, "label name twice"),
    ],
)
def test_bad_options_say_what_to_pass(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        monitoring.Options(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "allowed", "message"),
    [
        ("http_route", {"x"}, "already a label"),
        ("bad-name", {"x"}, "not a valid Prometheus label name"),
        ("tenant", set(), "needs allowed_values"),
    ],
)
def test_bad_extra_labels_say_why(name: str, allowed: set[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        monitoring.from_scope(name, str, allowed_values=allowed)
