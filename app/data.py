"""The data path: items in a SQL database (SQLAlchemy async) behind a read-through cache."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import DateTime, String, event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asyncproof.app.errors import connection_errors, unavailable
from asyncproof.app.settings import Settings
from asyncproof.app.sqlite import use_wal
from asyncproof.app.tasks.store import redis_resilience
from asyncproof.monitoring import InstrumentedTTLCache, Metrics


class Base(DeclarativeBase):
    """The models: app/migrations creates and changes their tables (a new revision per change)."""


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(String(1000), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(UTC))


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    description: str | None = Field(None, max_length=1000)


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str | None
    created_at: datetime

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # SQLite hands back naive datetimes; they were stored in UTC.
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def make_engine(settings: Settings) -> AsyncEngine:
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_pre_ping=not url.startswith("sqlite"),
        # asyncpg waits 60 s for a server that does not answer: a request must get its 503 sooner
        connect_args={"timeout": settings.db_connect_timeout} if "asyncpg" in url else {},
    )
    if url.startswith("sqlite"):

        @event.listens_for(engine.sync_engine, "connect")
        def _wal(dbapi_connection: Any, _: Any) -> None:
            # Several workers write the same file: WAL lets readers go on while one writes.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=10000")

            def pragma(sql: str) -> object:
                cursor.execute(sql)
                return cursor.fetchone()

            use_wal(pragma)
            cursor.close()

    return engine


class CacheBackend(Protocol):
    async def get(self, key: str) -> Any | None: ...
    async def set(self, key: str, value: Any) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def close(self) -> None: ...


class LocalCache:
    """In-process TTL + LRU (``monitoring.InstrumentedTTLCache``); per worker.

    Each worker's TTL is jittered, so the workers' copies of an entry do not all expire at once.
    """

    def __init__(self, name: str, metrics: Metrics, *, ttl: float, jitter: float, max_items: int) -> None:
        ttl = ttl * (1 + random.uniform(-jitter, jitter))
        self.cache = InstrumentedTTLCache(name, metrics, maxsize=max_items, ttl=ttl)

    async def get(self, key: str) -> Any | None:
        return self.cache.get(key)

    async def set(self, key: str, value: Any) -> None:
        self.cache[key] = value

    async def delete(self, key: str) -> None:
        self.cache.pop(key, None)

    async def close(self) -> None:
        self.cache.clear()


class RedisCache:
    """Redis, shared by every worker; each key's TTL is jittered so keys written together expire apart."""

    def __init__(self, name: str, metrics: Metrics, url: str, *, ttl: float, jitter: float) -> None:
        import redis.asyncio

        self.prefix = f"asyncproof:cache:{name}:"
        self.ttl = ttl
        self.jitter = jitter
        self.client = redis.asyncio.Redis.from_url(url, **redis_resilience(timeout=1))
        self._hits = metrics.cache_hits.labels(name)
        self._misses = metrics.cache_misses.labels(name)
        self._errors = metrics.cache_errors.labels(name)

    async def get(self, key: str) -> Any | None:
        # An outage of the cache is not one of the service: the read falls through to the database.
        try:
            raw = await self.client.get(self.prefix + key)
        except connection_errors():
            self._errors.inc()
            return None
        if raw is None:
            self._misses.inc()
            return None
        self._hits.inc()
        return json.loads(raw)

    async def set(self, key: str, value: Any) -> None:
        ttl = self.ttl * (1 + random.uniform(-self.jitter, self.jitter))
        try:
            await self.client.set(self.prefix + key, json.dumps(value), px=max(1, int(ttl * 1000)))
        except connection_errors():
            self._errors.inc()

    async def delete(self, key: str) -> None:
        await self.client.delete(self.prefix + key)

    async def close(self) -> None:
        await self.client.aclose()


class ReadThrough:
    """Cache-aside reads with single flight: concurrent misses for one key share one load."""

    def __init__(self, backend: CacheBackend) -> None:
        self.backend = backend
        self._loading: dict[str, asyncio.Future[Any]] = {}

    async def get(self, key: str, load: Callable[[], Awaitable[Any | None]]) -> Any | None:
        value = await self.backend.get(key)
        if value is not None:
            return value
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
            if value is not None:  # a missing row is not cached: it may be created next
                await self.backend.set(key, value)
            future.set_result(value)
            return value
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters get it, nobody else has to
            raise
        finally:
            del self._loading[key]


class Items:
    def __init__(self, engine: AsyncEngine, cache: ReadThrough) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.cache = cache

    async def create(self, data: ItemIn) -> ItemOut:
        async with unavailable("the database"), self.sessions.begin() as session:
            item = Item(name=data.name, description=data.description)
            session.add(item)
        return ItemOut.model_validate(item)

    async def get(self, item_id: int) -> ItemOut | None:
        async def load() -> dict[str, Any] | None:
            async with unavailable("the database"), self.sessions() as session:
                item = await session.get(Item, item_id)
                return None if item is None else ItemOut.model_validate(item).model_dump(mode="json")

        found = await self.cache.get(f"item:{item_id}", load)
        return None if found is None else ItemOut.model_validate(found)

    async def list(self, limit: int) -> list[ItemOut]:
        async with unavailable("the database"), self.sessions() as session:
            rows = await session.scalars(select(Item).order_by(Item.id.desc()).limit(limit))
            return [ItemOut.model_validate(row) for row in rows]

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
