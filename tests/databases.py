"""Databases of their own on the test PostgreSQL: created empty, always dropped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import asyncpg


async def run_admin_sql(postgres_url: str, sql: str) -> None:
    """Run one statement as the administrator of the test PostgreSQL (CREATE DATABASE and the like)."""
    connection = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def _named(postgres_url: str, prefix: str) -> tuple[str, str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    return name, postgres_url.rsplit("/", 1)[0] + f"/{name}"


@asynccontextmanager
async def empty_database(postgres_url: str, prefix: str = "asyncproof") -> AsyncIterator[str]:
    """The SQLAlchemy URL of a new, empty database beside ``postgres_url``'s."""
    name, url = _named(postgres_url, prefix)
    await run_admin_sql(postgres_url, f'CREATE DATABASE "{name}"')
    try:
        yield url
    finally:
        await run_admin_sql(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def empty_database_sync(postgres_url: str, prefix: str = "asyncproof") -> Iterator[str]:
    """:func:`empty_database` for tests without an event loop."""
    name, url = _named(postgres_url, prefix)
    asyncio.run(run_admin_sql(postgres_url, f'CREATE DATABASE "{name}"'))
    try:
        yield url
    finally:
        asyncio.run(run_admin_sql(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
