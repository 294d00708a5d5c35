"""Pool metrics against real SQLAlchemy async engines: SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from monitoring.db import instrument_pool
from monitoring.metrics import Metrics

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def connections(registry: CollectorRegistry, state: str) -> float | None:
    return registry.get_sample_value("db_client_connections", {"pool": "main", "state": state})


async def make_engine(url: str, **options: object) -> AsyncEngine:
    return create_async_engine(url, **options)  # type: ignore[arg-type]


async def test_used_and_idle_follow_concurrent_checkouts(url: str, registry: CollectorRegistry) -> None:
    engine = await make_engine(url, pool_size=3, max_overflow=2)
    instrument_pool(engine, "main", Metrics(registry))
    try:
        assert registry.get_sample_value("db_client_connections_max", {"pool": "main"}) == 5
        holding = asyncio.Event()
        release = asyncio.Event()
        entered = 0

        async def hold() -> None:
            nonlocal entered
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
                entered += 1
                if entered == 3:
                    holding.set()
                await release.wait()

        tasks = [asyncio.ensure_future(hold()) for _ in range(3)]
        await asyncio.wait_for(holding.wait(), 10)
        assert connections(registry, "used") == 3
        assert connections(registry, "idle") == 0
        release.set()
        await asyncio.gather(*tasks)
        assert connections(registry, "used") == 0
        assert connections(registry, "idle") == 3
        wait_count = registry.get_sample_value("db_client_connection_wait_seconds_count", {"pool": "main"})
        assert wait_count == 3
    finally:
        await engine.dispose()
    assert connections(registry, "idle") == 0  # dispose closed the pooled connections


async def test_exhausted_pool_times_out_and_is_counted(url: str, registry: CollectorRegistry) -> None:
    engine = await make_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    instrument_pool(engine, "main", Metrics(registry))
    try:
        async with engine.connect() as first:
            await first.execute(text("SELECT 1"))
            with pytest.raises(exc.TimeoutError):
                async with engine.connect():
                    pass
            assert connections(registry, "used") == 1
        assert registry.get_sample_value("db_client_connection_timeouts_total", {"pool": "main"}) == 1
        waited = registry.get_sample_value("db_client_connection_wait_seconds_sum", {"pool": "main"})
        assert waited is not None
        assert waited >= 0.2
        assert connections(registry, "used") == 0
        assert connections(registry, "idle") == 1
    finally:
        await engine.dispose()


async def test_invalidated_connection_leaves_the_counts_right(url: str, registry: CollectorRegistry) -> None:
    engine = await make_engine(url, pool_size=2, max_overflow=0)
    instrument_pool(engine, "main", Metrics(registry))
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await connection.invalidate()
        assert connections(registry, "used") == 0
        assert connections(registry, "idle") == 0  # the invalidated connection was closed
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        assert connections(registry, "idle") == 1
    finally:
        await engine.dispose()


async def test_null_pool_has_no_maximum_and_no_idle(url: str, registry: CollectorRegistry) -> None:
    engine = await make_engine(url, poolclass=NullPool)
    instrumentation = instrument_pool(engine, "main", Metrics(registry))
    try:
        assert registry.get_sample_value("db_client_connections_max", {"pool": "main"}) == float("inf")
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            assert connections(registry, "used") == 1
        assert connections(registry, "used") == 0
        assert connections(registry, "idle") == 0
        instrumentation.remove()
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        wait_count = registry.get_sample_value("db_client_connection_wait_seconds_count", {"pool": "main"})
        assert wait_count == 1  # nothing recorded after remove()
    finally:
        await engine.dispose()
