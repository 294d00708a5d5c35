"""Everything the routes use, made from the settings, opened at start-up and closed at shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from asyncproof.app.data import Items, LocalCache, ReadThrough, RedisCache, make_engine
from asyncproof.app.maintenance import Lease, PeriodicJob, RedisLease, SqliteLease
from asyncproof.app.migrations import ensure_schema
from asyncproof.app.settings import Settings
from asyncproof.app.tasks.lifecycle import lost_policy
from asyncproof.app.tasks.runner import TaskRunner
from asyncproof.app.tasks.store import TaskStore, open_store_for
from asyncproof.monitoring import Instrumentation, TaskTracker, instrument_pool

if TYPE_CHECKING:
    from asyncproof.app.queue import Publisher

log = logging.getLogger("asyncproof.app")


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: TaskStore
        self.runner: TaskRunner
        self.items: Items
        self.maintenance: PeriodicJob
        self.reaper: PeriodicJob
        self.queue_tracker: TaskTracker
        self.publisher: Publisher | None
        self._lease: Lease
        self._background: set[asyncio.Task[Any]] = set()
        self._check_clients: list[Any] = []  # Redis clients of the readiness checks

    async def start(self, instrumentation: Instrumentation) -> None:
        settings = self.settings
        metrics = instrumentation.metrics
        os.makedirs(settings.state_dir, exist_ok=True)
        self.store = open_store_for(settings)
        self.runner = TaskRunner(self.store, metrics, settings)

        engine = make_engine(settings)
        instrument_pool(engine, "app", metrics)
        # Under a server the schema was migrated before the workers started: only checked here.
        # In-process (tests) it is migrated here, under the same lock (app/migrations).
        await ensure_schema(engine)
        if settings.redis_url:
            backend: Any = RedisCache(
                "items",
                metrics,
                settings.redis_url,
                ttl=settings.cache_ttl_seconds,
                jitter=settings.cache_ttl_jitter,
            )
        else:
            backend = LocalCache(
                "items",
                metrics,
                ttl=settings.cache_ttl_seconds,
                jitter=settings.cache_ttl_jitter,
                max_items=settings.cache_max_items,
            )
        self.items = Items(engine, ReadThrough(backend))

        self._lease = (
            RedisLease(settings.redis_store_url)
            if settings.task_store == "redis"
            else SqliteLease(os.path.join(settings.state_dir, "maintenance.sqlite3"))
        )
        self.maintenance = PeriodicJob(
            "purge-expired-tasks", self.store.purge, self._lease, settings.maintenance_interval_seconds
        )
        lost = lost_policy(settings)
        self.reaper = PeriodicJob(
            "reap-lost-tasks", lambda: self.store.reap(lost), self._lease, settings.task_reap_interval_seconds
        )
        self.queue_tracker = TaskTracker(metrics, "celery")
        self.publisher = None
        if settings.broker_url:
            from asyncproof.app.queue import Publisher, make_celery

            self.publisher = Publisher(make_celery(settings), settings.broker_timeout_seconds)
        self._spawn(self.maintenance.run_forever())
        self._spawn(self.reaper.run_forever())
        self._spawn(self._interrupt_on_drain(instrumentation))
        self._register_checks(instrumentation)

    async def _interrupt_on_drain(self, instrumentation: Instrumentation) -> None:
        """Once SIGTERM starts the drain, give tasks the grace period, then mark the rest interrupted.

        The lifespan shutdown does the same, but it runs only after in-flight requests (BackgroundTasks
        included) are done, and Gunicorn may SIGKILL the worker before that: this does not wait for it.
        """
        # A flag set from the SIGTERM handler, so polled (10 times a second costs nothing).
        while not instrumentation.health.shutting_down:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        interrupted = await self.runner.shutdown(self.settings.shutdown_task_grace_seconds)
        if interrupted:
            log.warning("%d unfinished task(s) marked interrupted while draining", interrupted)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _register_checks(self, instrumentation: Instrumentation) -> None:
        instrumentation.add_check("database", self.items.ping, timeout=1.0)
        if self.settings.task_store != "memory":
            instrumentation.add_check("taskstore", self._ping_store, timeout=1.0)
        if self.settings.redis_url:
            instrumentation.add_check("redis", self._redis_ping(self.settings.redis_url), timeout=1.0)
        if self.settings.broker_url.startswith("redis"):
            instrumentation.add_check("broker", self._redis_ping(self.settings.broker_url), timeout=1.0)

    def _redis_ping(self, url: str) -> Any:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self._check_clients.append(client)
        return client.ping

    async def _ping_store(self) -> None:
        await self.store.get("readiness-probe")

    async def stop(self) -> None:
        interrupted = await self.runner.shutdown(self.settings.shutdown_task_grace_seconds)
        if interrupted:
            log.warning("%d unfinished task(s) marked interrupted at shutdown", interrupted)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        closers = [client.aclose for client in self._check_clients]
        for close in (self.store.close, self.items.cache.backend.close, self._lease.close, *closers):
            try:
                await close()
            except Exception:  # the next ones must close all the same
                log.exception("closing %s failed at shutdown", getattr(close, "__qualname__", close))
        await self.items.engine.dispose()
        if self.publisher is not None:
            self.publisher.close()


def services(request: Request) -> Services:
    """FastAPI dependency: the app's services."""
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]
