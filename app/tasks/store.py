"""Task stores behind one Protocol: a per-worker dict, a SQLite file, Redis.

Every store evicts by age (``ttl`` seconds after creation) and by count (``max_items``, oldest first),
so its memory stays bounded however many tasks are submitted. A record that has expired reads as
absent even before a purge has removed it.

``reap`` ends the records that nobody will end: a task whose worker was SIGKILLed, OOM-killed or lost
with its node stays ``running`` in a shared store until something else marks it. The store applies
the verdict of a policy (:mod:`asyncproof.app.tasks.lifecycle`) to every unfinished record, and
only to a record that is still unfinished when it is written, so a task that ends meanwhile keeps
its own outcome. The memory store has nothing to reap for others: its records live and die with the
one worker that runs them (a killed worker's tasks vanish with it, and polls get 404).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel

from asyncproof.app.errors import connection_errors, unavailable
from asyncproof.app.sqlite import use_wal

if TYPE_CHECKING:
    from asyncproof.app.settings import Settings

Status = Literal["pending", "running", "success", "failed"]
TERMINAL: frozenset[str] = frozenset({"success", "failed"})


class TaskRecord(BaseModel):
    id: str
    style: str
    status: Status = "pending"
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    # `timeout`, `interrupted`, `error`, `retries exhausted` or `worker_lost` when failed
    reason: str | None = None
    pid: int | None = None
    attempts: int = 0
    # "host:pid" of the web worker whose event loop runs an in-process task (not set for the queue)
    owner: str | None = None


# The fields an update may change.
MUTABLE = frozenset(TaskRecord.model_fields) - {"id", "style", "created_at"}
UNFINISHED = ("pending", "running")
WORKER_LOST = "worker_lost"
# A policy's verdict on an unfinished record: why it is lost (the record's error), or None.
LostPolicy = Callable[[TaskRecord], str | None]


def lost_changes(error: str) -> dict[str, Any]:
    return {"status": "failed", "reason": WORKER_LOST, "error": error, "finished_at": time.time()}


class TaskStore(Protocol):
    name: str

    async def create(self, record: TaskRecord) -> None: ...
    async def update(self, task_id: str, **changes: Any) -> None:
        """Change fields of an existing record; a record evicted meanwhile stays gone."""

    async def get(self, task_id: str) -> TaskRecord | None: ...
    async def purge(self) -> int:
        """Remove expired records now; returns how many."""

    async def reap(self, lost: LostPolicy) -> int:
        """Mark failed (``worker_lost``) every unfinished record ``lost`` has a reason for; returns
        how many."""

    async def count(self) -> int: ...
    async def close(self) -> None: ...


def _check_changes(changes: dict[str, Any]) -> None:
    unknown = changes.keys() - MUTABLE
    if unknown:
        raise ValueError(f"cannot update task fields {sorted(unknown)}")


class MemoryTaskStore:
    """The per-worker dict with a lock that many apps use; another worker cannot see its records."""

    name = "memory"

    def __init__(self, *, ttl: float, max_items: int) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self._records: OrderedDict[str, TaskRecord] = OrderedDict()
        self._lock = threading.Lock()  # executor threads update records too

    async def create(self, record: TaskRecord) -> None:
        with self._lock:
            self._records[record.id] = record
            while len(self._records) > self.max_items:
                self._records.popitem(last=False)

    async def update(self, task_id: str, **changes: Any) -> None:
        _check_changes(changes)
        with self._lock:
            record = self._records.get(task_id)
            if record is not None:
                self._records[task_id] = record.model_copy(update=changes)

    async def get(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            record = self._records.get(task_id)
        if record is None or record.created_at + self.ttl <= time.time():
            return None
        return record

    async def purge(self) -> int:
        cutoff = time.time() - self.ttl
        with self._lock:
            expired = [key for key, record in self._records.items() if record.created_at <= cutoff]
            for key in expired:
                del self._records[key]
        return len(expired)

    async def reap(self, lost: LostPolicy) -> int:
        # Only this worker's own records: a policy finds a deadline passed at most.
        reaped = 0
        with self._lock:
            for key, record in self._records.items():
                error = lost(record) if record.status in UNFINISHED else None
                if error is not None:
                    self._records[key] = record.model_copy(update=lost_changes(error))
                    reaped += 1
        return reaped

    async def count(self) -> int:
        return len(self._records)

    async def close(self) -> None:
        pass


class SqliteTaskStore:
    """One SQLite file shared by every worker of a machine (WAL, so readers never wait for writers).

    Calls run in a thread of their own so the event loop never waits on the file lock.
    """

    name = "sqlite"

    def __init__(self, path: str, *, ttl: float, max_items: int) -> None:
        self.path = path
        self.ttl = ttl
        self.max_items = max_items
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " id TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, body TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at)")

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            use_wal(lambda sql: db.execute(sql).fetchone())
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            with self._guard:
                self._connections.append(db)
        return db

    async def _run(self, func: Any, *args: Any) -> Any:
        return await asyncio.to_thread(func, *args)

    def _create(self, record: TaskRecord) -> None:
        db = self._connect()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO tasks (id, created_at, body) VALUES (?, ?, ?)",
                (record.id, record.created_at, record.model_dump_json()),
            )
            # seq only grows, so the newest max_items rows are those above this bound.
            db.execute("DELETE FROM tasks WHERE seq <= (SELECT max(seq) FROM tasks) - ?", (self.max_items,))

    def _update(self, task_id: str, changes: dict[str, Any]) -> None:
        db = self._connect()
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT body FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return
            record = TaskRecord.model_validate_json(row[0]).model_copy(update=changes)
            db.execute("UPDATE tasks SET body = ? WHERE id = ?", (record.model_dump_json(), task_id))

    def _get(self, task_id: str) -> TaskRecord | None:
        row = (
            self._connect()
            .execute(
                "SELECT body FROM tasks WHERE id = ? AND created_at > ?", (task_id, time.time() - self.ttl)
            )
            .fetchone()
        )
        return None if row is None else TaskRecord.model_validate_json(row[0])

    def _purge(self) -> int:
        db = self._connect()
        with db:
            return db.execute("DELETE FROM tasks WHERE created_at <= ?", (time.time() - self.ttl,)).rowcount

    def _reap(self, lost: LostPolicy) -> int:
        db = self._connect()
        unfinished = db.execute(
            "SELECT body FROM tasks WHERE json_extract(body, '$.status') IN (?, ?)", UNFINISHED
        ).fetchall()
        verdicts = []
        for (body,) in unfinished:
            record = TaskRecord.model_validate_json(body)
            error = lost(record)
            if error is not None:
                verdicts.append((record.id, error))
        reaped = 0
        for task_id, error in verdicts:
            with db:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT body FROM tasks WHERE id = ?", (task_id,)).fetchone()
                if row is None:
                    continue
                record = TaskRecord.model_validate_json(row[0])
                if record.status not in UNFINISHED:  # it ended meanwhile: its own outcome stands
                    continue
                record = record.model_copy(update=lost_changes(error))
                db.execute("UPDATE tasks SET body = ? WHERE id = ?", (record.model_dump_json(), task_id))
                reaped += 1
        return reaped

    def _count(self) -> int:
        return int(self._connect().execute("SELECT count(*) FROM tasks").fetchone()[0])

    async def create(self, record: TaskRecord) -> None:
        await self._run(self._create, record)

    async def update(self, task_id: str, **changes: Any) -> None:
        _check_changes(changes)
        await self._run(self._update, task_id, changes)

    async def get(self, task_id: str) -> TaskRecord | None:
        result: TaskRecord | None = await self._run(self._get, task_id)
        return result

    async def purge(self) -> int:
        result: int = await self._run(self._purge)
        return result

    async def reap(self, lost: LostPolicy) -> int:
        result: int = await self._run(self._reap, lost)
        return result

    async def count(self) -> int:
        result: int = await self._run(self._count)
        return result

    async def close(self) -> None:
        with self._guard:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()


# Updates a record only if it still exists, so an update never resurrects an evicted record
# (without its TTL); a record that reaches a terminal state leaves the set of unfinished ones.
_UPDATE_IF_EXISTS = """
local body = redis.call('GET', KEYS[1])
if not body then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
if ARGV[2] == '1' then redis.call('SREM', KEYS[2], ARGV[3]) end
return 1
"""
# The reaper's update: only while the record is still unfinished.
_REAP_IF_UNFINISHED = """
local body = redis.call('GET', KEYS[1])
if not body then redis.call('SREM', KEYS[2], ARGV[2]) return 0 end
local status = cjson.decode(body)['status']
if status ~= 'pending' and status ~= 'running' then redis.call('SREM', KEYS[2], ARGV[2]) return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""


REDIS_STORE = "the Redis task store"


def redis_resilience(timeout: float) -> dict[str, Any]:
    """Client options for a Redis that may restart: a connection the pool kept from before the restart
    is dropped and the command tried once more on a new one (a second failure is the outage), and
    idle connections are checked before use."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError, TimeoutError

    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [ConnectionError, TimeoutError],
        "health_check_interval": 30,
    }


class RedisTaskStore:
    """Records as JSON strings with a TTL, plus a sorted set by creation time that bounds their number."""

    name = "redis"

    def __init__(self, url: str, *, ttl: float, max_items: int, prefix: str = "asyncproof:tasks") -> None:
        import redis.asyncio

        self.ttl = ttl
        self.max_items = max_items
        self.prefix = prefix
        self.index = f"{prefix}:index"
        self.unfinished = f"{prefix}:unfinished"  # ids of records not yet success/failed
        self.client = redis.asyncio.Redis.from_url(url, **redis_resilience(timeout=2))
        self._update_script = self.client.register_script(_UPDATE_IF_EXISTS)
        self._reap_script = self.client.register_script(_REAP_IF_UNFINISHED)

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}:{task_id}"

    async def create(self, record: TaskRecord) -> None:
        async with unavailable(REDIS_STORE), self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._key(record.id), record.model_dump_json(), px=int(self.ttl * 1000))
            pipe.zadd(self.index, {record.id: record.created_at})
            if record.status in UNFINISHED:
                pipe.sadd(self.unfinished, record.id)
            pipe.zcard(self.index)
            *_, size = await pipe.execute()
        if size > self.max_items:  # the record is stored: trimming the oldest may wait for the next one
            with contextlib.suppress(*connection_errors()):
                await self._trim(size)

    async def _trim(self, size: int) -> None:
        oldest: Any = await self.client.zpopmin(self.index, size - self.max_items)
        if oldest:  # [(member, score), ...]
            ids = [member.decode() for member, _ in oldest]
            await self.client.delete(*(self._key(task_id) for task_id in ids))
            await self.client.srem(self.unfinished, *ids)

    async def update(self, task_id: str, **changes: Any) -> None:
        _check_changes(changes)
        record = await self.get(task_id)
        if record is not None:
            updated = record.model_copy(update=changes)
            ended = "1" if updated.status in TERMINAL else "0"
            async with unavailable(REDIS_STORE):
                await self._update_script(
                    keys=[self._key(task_id), self.unfinished],
                    args=[updated.model_dump_json(), ended, task_id],
                )

    async def get(self, task_id: str) -> TaskRecord | None:
        async with unavailable(REDIS_STORE):
            body = await self.client.get(self._key(task_id))
        return None if body is None else TaskRecord.model_validate_json(body)

    async def purge(self) -> int:
        # The records expire by themselves; their index entries go here.
        removed: int = await self.client.zremrangebyscore(self.index, "-inf", time.time() - self.ttl)
        return removed

    async def reap(self, lost: LostPolicy) -> int:
        members: Any = await self.client.smembers(self.unfinished)
        ids = sorted(member.decode() if isinstance(member, bytes) else member for member in members)
        reaped = 0
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            bodies = await self.client.mget([self._key(task_id) for task_id in batch])
            for task_id, body in zip(batch, bodies, strict=True):
                record = None if body is None else TaskRecord.model_validate_json(body)
                if record is None or record.status not in UNFINISHED:
                    await self.client.srem(self.unfinished, task_id)  # expired, evicted or ended
                    continue
                error = lost(record)
                if error is None:
                    continue
                body = record.model_copy(update=lost_changes(error)).model_dump_json()
                reaped += int(
                    await self._reap_script(keys=[self._key(task_id), self.unfinished], args=[body, task_id])
                )
        return reaped

    async def count(self) -> int:
        size: int = await self.client.zcard(self.index)
        return size

    async def close(self) -> None:
        await self.client.aclose()


def open_store_for(settings: Settings) -> TaskStore:
    """The task store the settings choose (web workers and Celery workers open the same one)."""
    return open_store(
        settings.task_store,
        path=settings.task_db_path,
        redis_url=settings.redis_store_url,
        ttl=settings.task_ttl_seconds,
        max_items=settings.task_max_stored,
    )


def open_store(kind: str, *, path: str, redis_url: str, ttl: float, max_items: int) -> TaskStore:
    if kind == "memory":
        return MemoryTaskStore(ttl=ttl, max_items=max_items)
    if kind == "sqlite":
        return SqliteTaskStore(path, ttl=ttl, max_items=max_items)
    if kind == "redis":
        return RedisTaskStore(redis_url, ttl=ttl, max_items=max_items)
    raise ValueError(f"unknown task store {kind!r}: use memory, sqlite or redis")
