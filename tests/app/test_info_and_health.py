"""The app's readiness checks for what it depends on, and the warm data set it carries."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncproof.app.warm import BYTES_PER_ENTRY
from tests.app.helpers import app_client, settings_for

pytestmark = pytest.mark.anyio


async def test_readiness_checks_the_database_and_the_task_store(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        response = await client.get("/health")
        assert response.status_code == 200
        document = response.json()
        assert document["status"] == "pass"
        assert set(document["checks"]) == {"database:responseTime", "taskstore:responseTime"}
        assert all(check[0]["status"] == "pass" for check in document["checks"].values())


async def test_a_dead_redis_turns_readiness_503_not_liveness(tmp_path: Path) -> None:
    # nothing listens on port 1: the cache's Redis is down
    async with app_client(settings_for(tmp_path, redis_url="redis://127.0.0.1:1/0")) as (client, _):
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 503
        document = (await client.get("/health")).json()
        assert document["status"] == "fail"
        assert document["checks"]["redis:responseTime"][0]["status"] == "fail"
        assert document["checks"]["database:responseTime"][0]["status"] == "pass"


async def test_the_warm_data_set_is_loaded_and_takes_the_memory_asked_for(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path, warm_data_mb=32)) as (client, _):
        warm = (await client.get("/info")).json()["warm_data"]
    assert warm["megabytes_requested"] == 32
    assert warm["entries"] == 32 * 1024 * 1024 // BYTES_PER_ENTRY
    # resident memory grew by about what was asked for (not a lazily allocated promise)
    assert 16 * 1024 * 1024 <= warm["rss_growth_bytes"] <= 96 * 1024 * 1024


async def test_no_warm_data_by_default(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        warm = (await client.get("/info")).json()["warm_data"]
    assert warm["entries"] == 0
