"""Periodic maintenance that runs once per interval per deployment, not once per Gunicorn worker.

Every worker wakes at the start of each interval and tries to claim that interval's slot in a shared
lease (a SQLite file on one machine, Redis across machines); the one that claims it runs the job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from asyncproof.app.sqlite import use_wal

log = logging.getLogger("asyncproof.maintenance")


class Lease(Protocol):
    async def claim(self, job: str, slot: int, ttl: float) -> bool:
        """True for exactly one caller per (job, slot)."""

    async def close(self) -> None: ...


class SqliteLease:
    """Claims recorded in a SQLite table: one row per (job, slot), so the table is also a run log."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS maintenance_runs (job TEXT NOT NULL, slot INTEGER NOT NULL,"
                " pid INTEGER NOT NULL, claimed_at REAL NOT NULL, PRIMARY KEY (job, slot))"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        use_wal(lambda sql: db.execute(sql).fetchone())
        return db

    def _claim(self, job: str, slot: int, ttl: float) -> bool:
        db = self._connect()
        try:
            with db:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO maintenance_runs (job, slot, pid, claimed_at) VALUES (?, ?, ?, ?)",
                    (job, slot, os.getpid(), time.time()),
                )
                # The log keeps each job's last 1,000 slots (found through the primary key).
                db.execute("DELETE FROM maintenance_runs WHERE job = ? AND slot < ?", (job, slot - 1000))
            return cursor.rowcount == 1
        finally:
            db.close()

    async def claim(self, job: str, slot: int, ttl: float) -> bool:
        return await asyncio.to_thread(self._claim, job, slot, ttl)

    async def close(self) -> None:
        pass


class RedisLease:
    """``SET key NX PX ttl``: the first worker of any machine to set the slot's key wins it."""

    def __init__(self, url: str, prefix: str = "asyncproof:maintenance") -> None:
        import redis.asyncio

        self.prefix = prefix
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    async def claim(self, job: str, slot: int, ttl: float) -> bool:
        claimed = await self.client.set(
            f"{self.prefix}:{job}:{slot}", os.getpid(), nx=True, px=int(ttl * 1000)
        )
        return bool(claimed)

    async def close(self) -> None:
        await self.client.aclose()


class PeriodicJob:
    def __init__(
        self, name: str, job: Callable[[], Awaitable[object]], lease: Lease, interval: float
    ) -> None:
        self.name = name
        self.job = job
        self.lease = lease
        self.interval = interval
        self.runs = 0  # in this worker

    async def run_once(self, slot: int) -> bool:
        if not await self.lease.claim(self.name, slot, ttl=self.interval * 2):
            return False
        outcome = await self.job()
        self.runs += 1
        log.info("maintenance %s ran for slot %d: %s", self.name, slot, outcome)
        return True

    async def run_forever(self) -> None:
        while True:
            now = time.time()
            slot = int(now // self.interval)
            # Wake a little after the slot starts; the jitter spreads the workers' claims.
            await asyncio.sleep(
                (slot + 1) * self.interval - now + random.uniform(0, min(0.2, self.interval / 10))
            )
            try:
                await self.run_once(slot + 1)
            except Exception:  # a failed run must not stop the next ones
                log.exception("maintenance %s failed", self.name)
