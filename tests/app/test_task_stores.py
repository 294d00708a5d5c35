"""Each task store against the real thing: a dict, a SQLite file, Redis at 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis

from asyncproof.app.tasks.store import MemoryTaskStore, RedisTaskStore, SqliteTaskStore, TaskRecord, TaskStore
from tests.services import REDIS_URL

pytestmark = pytest.mark.anyio

KINDS = ["memory", "sqlite", "redis"]


@pytest.fixture(params=KINDS)
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    made: list[TaskStore] = []
    prefix = f"asyncproof-test:{uuid.uuid4().hex}"

    def make(ttl: float = 60, max_items: int = 100) -> TaskStore:
        store: TaskStore
        if request.param == "memory":
            store = MemoryTaskStore(ttl=ttl, max_items=max_items)
        elif request.param == "sqlite":
            store = SqliteTaskStore(str(tmp_path / "tasks.sqlite3"), ttl=ttl, max_items=max_items)
        else:
            redis_url = request.getfixturevalue("redis_url")
            store = RedisTaskStore(redis_url, ttl=ttl, max_items=max_items, prefix=prefix)
        made.append(store)
        return store

    yield make
    for store in made:
        if isinstance(store, RedisTaskStore):
            keys = [key async for key in store.client.scan_iter(f"{prefix}*")]
            if keys:
                await store.client.delete(*keys)
        await store.close()


def record(**fields: object) -> TaskRecord:
    return TaskRecord(id=uuid.uuid4().hex, style="executor", created_at=time.time(), **fields)


async def test_create_get_update(make_store) -> None:
    store = make_store()
    task = record()
    await store.create(task)
    assert await store.get(task.id) == task
    await store.update(task.id, status="running", started_at=123.0, pid=42)
    await store.update(task.id, status="success", result={"ok": True}, finished_at=124.0)
    found = await store.get(task.id)
    assert found is not None
    assert (found.status, found.started_at, found.pid, found.result) == ("success", 123.0, 42, {"ok": True})
    assert await store.get("missing") is None


async def test_update_refuses_unknown_or_fixed_fields(make_store) -> None:
    store = make_store()
    task = record()
    await store.create(task)
    with pytest.raises(ValueError, match="created_at"):
        await store.update(task.id, created_at=0.0)
    with pytest.raises(ValueError, match="colour"):
        await store.update(task.id, colour="red")


async def test_bounded_by_count_oldest_first(make_store) -> None:
    store = make_store(max_items=10)
    tasks = [record() for _ in range(25)]
    for task in tasks:
        await store.create(task)
    assert await store.count() == 10
    assert [await store.get(t.id) is not None for t in tasks] == [False] * 15 + [True] * 10
    # an update of an evicted record does not bring it back
    await store.update(tasks[0].id, status="success")
    assert await store.get(tasks[0].id) is None
    assert await store.count() == 10


async def test_expired_records_read_as_absent_and_are_purged(make_store) -> None:
    store = make_store(ttl=0.5)
    old = record()
    await store.create(old)
    await asyncio.sleep(0.7)
    fresh = record()
    await store.create(fresh)
    assert await store.get(old.id) is None
    assert await store.get(fresh.id) is not None
    assert await store.purge() == 1
    assert await store.count() == 1


async def test_memory_stays_bounded_under_many_submissions(make_store) -> None:
    store = make_store(max_items=50)
    for _ in range(2000):
        await store.create(record())
    assert await store.count() == 50


def _write_from_another_process(path: str, task_id: str) -> None:
    async def write() -> None:
        store = SqliteTaskStore(path, ttl=60, max_items=100)
        await store.update(task_id, status="success", pid=1)
        await store.close()

    asyncio.run(write())


async def test_sqlite_is_shared_between_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "tasks.sqlite3")
    store = SqliteTaskStore(path, ttl=60, max_items=100)
    task = record()
    await store.create(task)
    child = multiprocessing.get_context("spawn").Process(
        target=_write_from_another_process, args=(path, task.id)
    )
    child.start()
    await asyncio.to_thread(child.join, 30)
    assert child.exitcode == 0
    found = await store.get(task.id)
    assert found is not None
    assert found.status == "success"
    await store.close()


async def test_redis_records_carry_a_ttl(redis_url: str) -> None:
    prefix = f"asyncproof-test:{uuid.uuid4().hex}"
    store = RedisTaskStore(redis_url, ttl=30, max_items=10, prefix=prefix)
    task = record()
    await store.create(task)
    await store.update(task.id, status="running")
    ttl_ms = await store.client.pttl(f"{prefix}:{task.id}")
    assert 0 < ttl_ms <= 30_000  # the update kept the TTL
    await store.client.delete(f"{prefix}:{task.id}", f"{prefix}:index")
    await store.close()


async def test_reap_ends_only_the_unfinished_records_the_policy_names(make_store: Any) -> None:
    store = make_store()
    lost_running, lost_pending = record(status="running"), record(status="pending")
    alive, done = record(status="running"), record(status="success", result={"ok": True})
    for each in (lost_running, lost_pending, alive, done):
        await store.create(each)
    doomed = {lost_running.id, lost_pending.id, done.id}  # a finished record is never touched

    assert await store.reap(lambda r: "its worker is gone" if r.id in doomed else None) == 2
    for each in (lost_running, lost_pending):
        reaped = await store.get(each.id)
        assert reaped is not None
        assert (reaped.status, reaped.reason, reaped.error) == ("failed", "worker_lost", "its worker is gone")
        assert reaped.finished_at is not None
    assert (await store.get(alive.id)).status == "running"  # type: ignore[union-attr]
    assert (await store.get(done.id)).result == {"ok": True}  # type: ignore[union-attr]
    assert await store.reap(lambda r: "again") == 1  # the reaped ones are finished now: only `alive`


# The memory store reads and writes under one lock: nothing can end in between there.
@pytest.mark.parametrize("make_store", ["sqlite", "redis"], indirect=True)
async def test_a_record_that_ends_between_the_reapers_read_and_write_keeps_its_outcome(
    make_store: Any,
) -> None:
    store = make_store()
    racing = record(status="running")
    await store.create(racing)
    finished = racing.model_copy(update={"status": "success", "result": {"ok": 1}}).model_dump_json()

    def lost(found: TaskRecord) -> str:
        # The worker ends the task after the reaper read it, before the reaper writes (a second
        # connection, as another process would).
        if isinstance(store, SqliteTaskStore):
            with sqlite3.connect(store.path) as db:
                db.execute("UPDATE tasks SET body = ? WHERE id = ?", (finished, found.id))
        else:
            client = redis.Redis.from_url(REDIS_URL)
            client.set(store._key(found.id), finished, keepttl=True)
            client.close()
        return "too late"

    assert await store.reap(lost) == 0
    assert (await store.get(racing.id)).status == "success"  # type: ignore[union-attr]
