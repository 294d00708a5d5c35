"""A dependency that is down answers 503 with a JSON detail naming it and a Retry-After, never 500;
the cache's outage is not the service's."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from asyncproof.app.errors import DependencyUnavailable, unavailable
from tests.app.helpers import app_client, sample, settings_for
from tests.processes import free_port

pytestmark = pytest.mark.anyio


def closed_redis() -> str:
    """A Redis URL where nothing listens: the outage, from the app's side."""
    return f"redis://127.0.0.1:{free_port()}/0"


def assert_unavailable(response: object, dependency: str) -> None:
    assert response.status_code == 503, response.text  # type: ignore[attr-defined]
    assert dependency in response.json()["detail"]  # type: ignore[attr-defined]
    assert response.headers["retry-after"] == "5"  # type: ignore[attr-defined]


async def test_a_redis_task_store_outage_answers_503_naming_it(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, task_store="redis", task_store_url=closed_redis())
    async with app_client(settings) as (client, _):
        started = time.monotonic()
        assert_unavailable(
            await client.post("/work/executor", json={"kind": "io", "duration_ms": 1}), "Redis task store"
        )
        assert_unavailable(await client.get("/tasks/abc"), "Redis task store")
        assert time.monotonic() - started < 5  # within the client's 2 s connect timeout, not a hang
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 503


async def test_the_queue_style_answers_503_when_its_store_or_broker_is_down(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, task_store="redis", task_store_url=closed_redis(), broker_url=closed_redis()
    )
    async with app_client(settings) as (client, _):
        assert_unavailable(
            await client.post("/work/queue", json={"kind": "io", "duration_ms": 1}), "Redis task store"
        )
    settings = settings_for(tmp_path / "b", broker_url=closed_redis(), broker_timeout_seconds=0.5)
    async with app_client(settings) as (client, _):
        response = await client.post("/work/queue", json={"kind": "io", "duration_ms": 1})
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"


async def test_a_cache_outage_falls_through_to_the_database_and_is_counted(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, redis_url=closed_redis())
    async with app_client(settings) as (client, app):
        created = await client.post("/items", json={"name": "kept"})
        assert created.status_code == 201, created.text
        for _ in range(3):
            read = await client.get(f"/items/{created.json()['id']}")
            assert read.status_code == 200, read.text
            assert read.json()["name"] == "kept"
        # each read: a failed get, then a failed set of what the database gave
        assert sample(app, "cache_errors_total", cache="items") == 6


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[tuple[str, str]]:
    """A database of its own on the test PostgreSQL: (SQLAlchemy URL, name)."""
    dsn = postgres_url.replace("+asyncpg", "")
    name = f"asyncproof_outage_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}", name
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_postgresql_outage_answers_503_and_the_service_comes_back(
    tmp_path: Path, database: tuple[str, str], postgres_url: str
) -> None:
    url, name = database
    admin = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        async with app_client(settings_for(tmp_path, database_url=url)) as (client, _):
            assert (await client.post("/items", json={"name": "before"})).status_code == 201
            # The database stops taking connections and drops the ones it has, as in a restart.
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            for _ in range(3):
                assert_unavailable(await client.post("/items", json={"name": "during"}), "database")
                assert_unavailable(await client.get("/items"), "database")
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            back = time.monotonic()
            while (await client.post("/items", json={"name": "after"})).status_code != 201:
                assert time.monotonic() - back < 5, "not back within 5 s of the database"
    finally:
        await admin.close()


@pytest.mark.parametrize(
    "error", [ConnectionRefusedError(111, "Connection refused"), TimeoutError("connect timed out")]
)
async def test_a_driver_that_cannot_connect_is_named_as_the_dependency(error: Exception) -> None:
    with pytest.raises(DependencyUnavailable, match="the database is unavailable"):
        async with unavailable("the database"):
            raise error


async def test_an_error_about_the_request_itself_is_not_an_outage() -> None:
    import sqlalchemy.exc

    integrity = sqlalchemy.exc.IntegrityError("INSERT ...", {}, Exception("duplicate key"))
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        async with unavailable("the database"):
            raise integrity
