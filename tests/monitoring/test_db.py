"""Pool metrics against real SQLAlchemy engines: SQLite (sqlite3, aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import gc
import math
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, exc, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AssertionPool, NullPool, Pool, QueuePool, SingletonThreadPool, StaticPool
from sqlalchemy.util import greenlet_spawn

from asyncproof.monitoring.db import instrument_pool
from asyncproof.monitoring.metrics import Metrics


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


def pool_value(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name, {"pool": "main"})


def make_engine(url: str, **options: Any) -> AsyncEngine:
    return create_async_engine(url, **options)


@pytest.mark.anyio
async def test_used_and_idle_follow_concurrent_checkouts(url: str, registry: CollectorRegistry) -> None:
    engine = make_engine(url, pool_size=3, max_overflow=2)
    instrument_pool(engine, "main", Metrics(registry))
    try:
        assert pool_value(registry, "db_client_connections_max") == 5
        assert connections(registry, "used") == 0
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
        assert pool_value(registry, "db_client_connection_wait_seconds_count") == 3
    finally:
        await engine.dispose()
    assert connections(registry, "idle") == 0  # dispose closed the pooled connections


@pytest.mark.anyio
async def test_exhausted_pool_times_out_and_is_counted(url: str, registry: CollectorRegistry) -> None:
    engine = make_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    instrument_pool(engine, "main", Metrics(registry))
    try:
        async with engine.connect() as first:
            await first.execute(text("SELECT 1"))
            with pytest.raises(exc.TimeoutError):
                async with engine.connect():
                    pass
            assert connections(registry, "used") == 1
            assert connections(registry, "idle") == 0
        assert pool_value(registry, "db_client_connection_timeouts_total") == 1
        assert pool_value(registry, "db_client_connection_wait_seconds_count") == 2
        waited = pool_value(registry, "db_client_connection_wait_seconds_sum")
        assert waited is not None
        assert waited >= 0.2
        assert connections(registry, "used") == 0
        assert connections(registry, "idle") == 1
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_invalidated_connection_leaves_the_counts_right(url: str, registry: CollectorRegistry) -> None:
    engine = make_engine(url, pool_size=2, max_overflow=0)
    instrument_pool(engine, "main", Metrics(registry))
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await connection.invalidate()
            assert connections(registry, "used") == 0  # invalidating checks the connection back in
        assert connections(registry, "idle") == 0  # and closes it
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))  # the same pool entry reconnects
            assert connections(registry, "used") == 1
        assert connections(registry, "idle") == 1
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_detached_connection_leaves_the_counts(url: str, registry: CollectorRegistry) -> None:
    engine = make_engine(url, pool_size=2, max_overflow=0)
    instrument_pool(engine, "main", Metrics(registry))
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await connection.run_sync(lambda sync_connection: sync_connection.detach())
            assert connections(registry, "used") == 0
            assert connections(registry, "idle") == 0
        assert connections(registry, "used") == 0
        assert connections(registry, "idle") == 0
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        assert connections(registry, "idle") == 1
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def breakable(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, Callable[[], Awaitable[None]]]]:
    """A database URL and a coroutine function that makes new connections to it fail for real."""
    if request.param == "sqlite":
        directory = tmp_path / "data"
        directory.mkdir()

        async def remove_directory() -> None:  # sqlite3 cannot open a file in a missing directory
            shutil.rmtree(directory)

        yield f"sqlite+aiosqlite:///{directory / 'pool.db'}", remove_directory
        # aiosqlite answers a failed connect by queueing its worker thread's stop with a future on
        # this loop that nobody awaits; should the loop close first, the thread's callback raises
        # "Event loop is closed" in the next test. Wait for those threads while the loop is open.
        for thread in threading.enumerate():
            if thread.name.endswith("(_connection_worker_thread)"):
                thread.join(timeout=10)
        return
    base = make_url(str(request.getfixturevalue("postgres_url")))
    database = f"asyncproof_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    async def drop_database() -> None:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))

    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{database}"'))
    try:
        yield base.set(database=database).render_as_string(hide_password=False), drop_database
    finally:
        await drop_database()
        await admin.dispose()
        # Connections the forced drop cut off may only be garbage by now; collect them while their
        # event loop still runs, or asyncpg finalises them after the loop has closed (seen once in CI).
        gc.collect()


@pytest.mark.anyio
async def test_failed_reconnect_does_not_drive_used_negative(
    breakable: tuple[str, Callable[[], Awaitable[None]]], registry: CollectorRegistry
) -> None:
    url, break_database = breakable
    engine = make_engine(url, pool_size=1, max_overflow=0)
    instrument_pool(engine, "main", Metrics(registry))
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await connection.invalidate()
        await break_database()
        # SQLAlchemy checks the pool entry back in after the failed reconnect, without a checkout.
        with pytest.raises(exc.DBAPIError):
            async with engine.connect():
                pass
        assert connections(registry, "used") == 0
        assert connections(registry, "idle") == 0
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_counts_and_wait_survive_dispose_with_a_connection_checked_out(
    url: str, registry: CollectorRegistry
) -> None:
    engine = make_engine(url, pool_size=2, max_overflow=0)
    instrumentation = instrument_pool(engine, "main", Metrics(registry))
    replaced_pool = engine.sync_engine.pool
    try:
        async with engine.connect() as old:
            await old.execute(text("SELECT 1"))
            async with engine.connect() as idle_soon:
                await idle_soon.execute(text("SELECT 1"))
            await engine.dispose()  # closes the idle connection; `old` stays with the replaced pool
            assert connections(registry, "used") == 0
            assert connections(registry, "idle") == 0
            async with engine.connect() as new:
                await new.execute(text("SELECT 1"))
                assert connections(registry, "used") == 1
        assert connections(registry, "used") == 0  # `old` went back to the replaced pool, not counted
        assert connections(registry, "idle") == 1
        await greenlet_spawn(replaced_pool.dispose)  # closes `old`: an entry of the replaced pool
        assert connections(registry, "idle") == 1
        assert pool_value(registry, "db_client_connection_wait_seconds_count") == 3
        instrumentation.remove()
        instrumentation.remove()
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        assert pool_value(registry, "db_client_connection_wait_seconds_count") == 3
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_null_pool_has_no_maximum_and_no_idle(url: str, registry: CollectorRegistry) -> None:
    engine = make_engine(url, poolclass=NullPool)
    instrumentation = instrument_pool(engine, "main", Metrics(registry))
    try:
        assert pool_value(registry, "db_client_connections_max") == math.inf
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            assert connections(registry, "used") == 1
        assert connections(registry, "used") == 0
        assert connections(registry, "idle") == 0
        instrumentation.remove()
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        assert pool_value(registry, "db_client_connection_wait_seconds_count") == 1  # not after remove()
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_static_pool_shared_by_overlapping_checkouts_settles_at_idle(
    registry: CollectorRegistry,
) -> None:
    engine = make_engine("sqlite+aiosqlite://")  # in-memory SQLite gets StaticPool: one shared connection
    instrument_pool(engine, "main", Metrics(registry))
    try:
        assert pool_value(registry, "db_client_connections_max") == 1
        async with engine.connect() as first:
            await first.execute(text("SELECT 1"))
            async with engine.connect() as second:
                await second.execute(text("SELECT 1"))
                assert connections(registry, "used") == 1
        # StaticPool checks its entry in once for two checkouts; a +1/-1 count would stay at used=1.
        assert connections(registry, "used") == 0
        assert connections(registry, "idle") == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"poolclass": QueuePool, "pool_size": 3, "max_overflow": 2}, 5),
        ({"poolclass": QueuePool, "pool_size": 3, "max_overflow": -1}, math.inf),
        ({"poolclass": NullPool}, math.inf),
        ({"poolclass": StaticPool}, 1),
        ({"poolclass": AssertionPool}, 1),
        ({"poolclass": SingletonThreadPool, "pool_size": 4}, 4),
    ],
    ids=["queue", "queue-unbounded-overflow", "null", "static", "assertion", "singleton-thread"],
)
def test_max_follows_the_pool_class(
    tmp_path: Path, registry: CollectorRegistry, options: dict[str, Any], expected: float
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'pool.db'}", **options)
    instrument_pool(engine, "main", Metrics(registry))
    try:
        pool: Pool = engine.pool
        assert isinstance(pool, options["poolclass"])
        assert pool_value(registry, "db_client_connections_max") == expected
    finally:
        engine.dispose()


def test_sync_engine_counts_connections_held_by_threads(tmp_path: Path, registry: CollectorRegistry) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'pool.db'}", pool_size=4, max_overflow=0)
    instrument_pool(engine, "main", Metrics(registry))
    holding = threading.Barrier(5)
    release = threading.Event()

    def hold() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            holding.wait(10)
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        holding.wait(10)
        assert connections(registry, "used") == 4
        assert connections(registry, "idle") == 0
        release.set()
        for thread in threads:
            thread.join(10)
        assert connections(registry, "used") == 0
        assert connections(registry, "idle") == 4
        assert pool_value(registry, "db_client_connection_wait_seconds_count") == 4
    finally:
        release.set()
        engine.dispose()
    assert connections(registry, "idle") == 0
