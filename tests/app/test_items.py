"""The data path: items over SQLAlchemy async (SQLite, PostgreSQL), the read-through cache, its metrics."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from asyncproof.app.data import LocalCache, ReadThrough, RedisCache
from asyncproof.monitoring import Metrics
from tests.app.helpers import app_client, sample, settings_for

pytestmark = pytest.mark.anyio


async def test_create_read_list(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        created = []
        for name in ("first", "second", "third"):
            response = await client.post("/items", json={"name": name, "description": f"the {name}"})
            assert response.status_code == 201, response.text
            created.append(response.json())
        item = (await client.get(f"/items/{created[1]['id']}")).json()
        assert item["name"] == "second"
        assert item["description"] == "the second"
        assert item["created_at"].endswith("Z") or item["created_at"].endswith("+00:00")
        listed = (await client.get("/items", params={"limit": 2})).json()
        assert [i["name"] for i in listed] == ["third", "second"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/items", {}),
        ("POST", "/items", {"name": ""}),
        ("POST", "/items", {"name": "x" * 101}),
        ("POST", "/items", {"name": "ok", "price": 3}),
        ("GET", "/items/abc", None),
        ("GET", "/items/0", None),
        ("GET", "/items?limit=0", None),
        ("GET", "/items?limit=101", None),
        ("GET", "/items?limit=many", None),
    ],
)
async def test_bad_input_is_422(tmp_path: Path, method: str, path: str, body: dict | None) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _):
        response = await client.request(method, path, json=body)
        assert response.status_code == 422
        assert response.json()["detail"]


async def test_missing_item_is_404_and_not_cached(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path)) as (client, _app):
        response = await client.get("/items/999")
        assert response.status_code == 404
        assert response.json()["detail"] == "item 999 not found"
        created = (await client.post("/items", json={"name": "late"})).json()
        assert (await client.get(f"/items/{created['id']}")).status_code == 200


async def test_reads_go_through_the_cache(tmp_path: Path) -> None:
    async with app_client(settings_for(tmp_path)) as (client, app):
        item = (await client.post("/items", json={"name": "cached"})).json()
        for _ in range(5):
            assert (await client.get(f"/items/{item['id']}")).status_code == 200
        assert sample(app, "cache_misses_total", cache="items") == 1
        assert sample(app, "cache_hits_total", cache="items") == 4
        assert sample(app, "cache_size_items", cache="items") == 1
        # the pool is instrumented too
        assert sample(app, "db_client_connections_max", pool="app") == 10
        assert sample(app, "db_client_connection_wait_seconds_count", pool="app") >= 1


async def test_single_flight_one_load_for_concurrent_misses() -> None:
    metrics = Metrics(CollectorRegistry())
    cache = ReadThrough(LocalCache("t", metrics, ttl=60, jitter=0.1, max_items=10))
    loads = 0

    async def load() -> dict:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.1)
        return {"value": 1}

    results = await asyncio.gather(*(cache.get("k", load) for _ in range(50)))
    assert results == [{"value": 1}] * 50
    assert loads == 1


async def test_single_flight_shares_the_failure_then_retries() -> None:
    cache = ReadThrough(LocalCache("t", Metrics(CollectorRegistry()), ttl=60, jitter=0, max_items=10))
    calls = 0

    async def broken() -> dict:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise ConnectionError("database down")

    results = await asyncio.gather(*(cache.get("k", broken) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert calls == 1
    with pytest.raises(ConnectionError):
        await cache.get("k", broken)
    assert calls == 2  # a failure is not cached


async def test_redis_cache_jitters_ttls_and_counts(redis_url: str) -> None:
    registry = CollectorRegistry()
    name = f"test-{uuid.uuid4().hex[:8]}"
    backend = RedisCache(name, Metrics(registry), redis_url, ttl=100, jitter=0.2)
    cache = ReadThrough(backend)
    try:
        for i in range(20):
            await cache.get(f"k{i}", lambda i=i: asyncio.sleep(0, {"i": i}))
        assert await cache.get("k3", lambda: asyncio.sleep(0, None)) == {"i": 3}
        ttls = {await backend.client.pttl(f"{backend.prefix}k{i}") for i in range(20)}
        assert all(80_000 <= t <= 120_000 for t in ttls)
        assert len(ttls) > 10  # spread, not one expiry for all
        assert registry.get_sample_value("cache_misses_total", {"cache": name}) == 20
        assert registry.get_sample_value("cache_hits_total", {"cache": name}) == 1
    finally:
        await backend.client.delete(*[f"{backend.prefix}k{i}" for i in range(20)])
        await backend.close()


async def test_postgresql_data_path_and_pool_metrics(tmp_path: Path, postgres_url: str) -> None:
    table_owner = create_async_engine(postgres_url)
    async with table_owner.begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS items"))
    await table_owner.dispose()
    settings = settings_for(
        tmp_path, database_url=postgres_url, db_pool_size=2, db_max_overflow=0, db_pool_timeout=0.5
    )
    async with app_client(settings) as (client, app):
        item = (await client.post("/items", json={"name": "pg"})).json()
        responses = await asyncio.gather(*(client.get("/items", params={"limit": 5}) for _ in range(20)))
        assert all(r.status_code == 200 for r in responses)
        assert (await client.get(f"/items/{item['id']}")).json()["name"] == "pg"
        assert sample(app, "db_client_connections_max", pool="app") == 2
        assert sample(app, "db_client_connection_wait_seconds_count", pool="app") >= 21
        assert sample(app, "db_client_connections", pool="app", state="used") == 0
        assert 1 <= sample(app, "db_client_connections", pool="app", state="idle") <= 2
        health = (await client.get("/health")).json()
        assert health["checks"]["database:responseTime"][0]["status"] == "pass"
