from __future__ import annotations

import asyncio
import time

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from asyncproof import monitoring
from asyncproof.monitoring.health import Health
from tests.monitoring.helpers import client_for

pytestmark = pytest.mark.anyio


def make_app(**options: object) -> tuple[FastAPI, monitoring.Instrumentation]:
    app = FastAPI()
    return app, monitoring.instrument(app, registry=CollectorRegistry(), **options)


async def test_all_pass_gives_200_everywhere_with_health_json() -> None:
    app, instr = make_app(service_id="orders")

    @instr.health.check("database", timeout=0.5)
    async def database() -> str:
        return "SELECT 1 ok"

    async with client_for(app) as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        full = await client.get("/health")
    assert live.status_code == ready.status_code == full.status_code == 200
    assert full.headers["content-type"].startswith("application/health+json")
    document = full.json()
    assert document["status"] == "pass"
    assert document["serviceId"] == "orders"
    (entry,) = document["checks"]["database:responseTime"]
    assert entry["status"] == "pass"
    assert entry["observedUnit"] == "ms"
    assert entry["observedValue"] >= 0
    assert entry["output"] == "SELECT 1 ok"
    assert entry["time"].endswith("Z")


@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_failing_or_hanging_critical_check_makes_ready_503_while_live_stays_200(failure: str) -> None:
    app, instr = make_app(readiness_cache_seconds=0)

    async def database() -> None:
        if failure == "raises":
            raise ConnectionRefusedError("connection refused")
        await asyncio.sleep(30)

    instr.add_check("database", database, timeout=0.2)
    async with client_for(app) as client:
        started = time.monotonic()
        ready = await client.get("/health/ready")
        elapsed = time.monotonic() - started
        live = await client.get("/health/live")
        full = await client.get("/health")
    assert ready.status_code == 503
    assert ready.json()["failing"] == ["database"]
    assert elapsed < 2  # the hanging check was cut at its timeout, not awaited
    assert live.status_code == 200
    assert full.status_code == 503
    output = full.json()["checks"]["database:responseTime"][0]["output"]
    assert ("timed out" if failure == "hangs" else "ConnectionRefusedError") in output


async def test_check_results_are_exported_as_health_check_status() -> None:
    app, instr = make_app(readiness_cache_seconds=0)
    healthy = {"cache": True}

    @instr.health.check("database")
    async def database() -> None:
        return None

    @instr.health.check("cache", critical=False)
    async def cache() -> None:
        if not healthy["cache"]:
            raise ConnectionError("cache down")

    def status(check: str) -> float | None:
        return instr.registry.get_sample_value("health_check_status", {"check": check})

    assert status("database") is None  # no series before readiness ran
    async with client_for(app) as client:
        await client.get("/health/ready")
        assert (status("database"), status("cache")) == (1, 1)
        healthy["cache"] = False
        await client.get("/health")
        assert (status("database"), status("cache")) == (1, 0)


async def test_non_critical_failure_warns_but_stays_ready() -> None:
    app, instr = make_app()

    async def cache() -> None:
        raise OSError("redis down")

    instr.add_check("cache", cache, critical=False)
    async with client_for(app) as client:
        ready = await client.get("/health/ready")
        full = await client.get("/health")
    assert ready.status_code == 200
    assert full.json()["status"] == "warn"


async def test_checks_run_concurrently() -> None:
    health = Health(cache_seconds=0)
    for index in range(5):

        async def slow() -> None:
            await asyncio.sleep(0.2)

        health.add_check(f"dep{index}", slow, timeout=1)
    started = time.monotonic()
    report = await health.readiness()
    assert report.status == "pass"
    assert time.monotonic() - started < 0.6


async def test_probe_storm_runs_checks_once_per_cache_period() -> None:
    health = Health(cache_seconds=5)
    runs = 0

    async def database() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)

    health.add_check("database", database)
    reports = await asyncio.gather(*(health.readiness() for _ in range(100)))
    reports.append(await health.readiness())
    assert {r.status for r in reports} == {"pass"}
    assert runs == 1


async def test_shutdown_turns_ready_503_but_not_live() -> None:
    app, instr = make_app()
    async with client_for(app) as client:
        assert (await client.get("/health/ready")).status_code == 200
        instr.health.begin_shutdown()
        assert (await client.get("/health/ready")).status_code == 503
        assert (await client.get("/health/live")).status_code == 200


async def test_health_endpoints_answer_get_and_head_only() -> None:
    app, _ = make_app()
    async with client_for(app) as client:
        assert (await client.head("/health/live")).status_code == 200
        refused = await client.post("/health/live")
    assert refused.status_code == 405
    assert refused.json() == {"detail": "Method Not Allowed"}


@pytest.mark.parametrize(
    ("name", "kwargs", "error"),
    [
        ("data base", {}, ValueError),
        ("db", {"timeout": 0}, ValueError),
    ],
)
def test_bad_check_registration_is_refused(
    name: str, kwargs: dict[str, float], error: type[Exception]
) -> None:
    async def check() -> None:
        pass

    with pytest.raises(error):
        Health().add_check(name, check, **kwargs)


def test_duplicate_check_name_is_refused() -> None:
    async def check() -> None:
        pass

    health = Health()
    health.add_check("db", check)
    with pytest.raises(ValueError, match="already registered"):
        health.add_check("db", check)
