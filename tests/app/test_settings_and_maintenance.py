"""Settings from ASYNCPROOF_* variables; the maintenance lease and job."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from asyncproof.app.maintenance import PeriodicJob, RedisLease, SqliteLease
from asyncproof.app.settings import Settings, default_workers

pytestmark = pytest.mark.anyio


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ASYNCPROOF_TASK_STORE", "redis")
    monkeypatch.setenv("ASYNCPROOF_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("ASYNCPROOF_WORKERS", "3")
    monkeypatch.setenv("ASYNCPROOF_STATE_DIR", str(tmp_path))
    settings = Settings()
    assert (settings.task_store, settings.broker_url, settings.workers) == (
        "redis",
        "redis://127.0.0.1:6379/3",
        3,
    )
    assert settings.sqlalchemy_url == f"sqlite+aiosqlite:///{tmp_path}/app.sqlite3"


def test_embedded_defaults_need_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TASK_STORE", "DATABASE_URL", "REDIS_URL", "BROKER_URL"):
        monkeypatch.delenv(f"ASYNCPROOF_{name}", raising=False)
    settings = Settings()
    assert settings.task_store == "sqlite"
    assert settings.sqlalchemy_url.startswith("sqlite+aiosqlite:///")
    assert settings.redis_url == settings.broker_url == ""
    assert 1 <= settings.workers == default_workers() <= 8


@pytest.mark.parametrize(
    ("name", "value"),
    [("TASK_STORE", "postgres"), ("WORKERS", "0"), ("TASK_TTL_SECONDS", "-1"), ("CACHE_TTL_JITTER", "1.5")],
)
def test_bad_settings_are_refused_by_name(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"ASYNCPROOF_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()


async def test_sqlite_lease_one_claim_per_slot(tmp_path: Path) -> None:
    leases = [SqliteLease(str(tmp_path / "lease.sqlite3")) for _ in range(3)]
    for slot in range(5):
        claims = await asyncio.gather(
            *(lease.claim("job", slot, ttl=10) for lease in leases for _ in range(3))
        )
        assert sum(claims) == 1
    assert not await leases[0].claim("job", 0, ttl=10)
    assert await leases[0].claim("other-job", 0, ttl=10)


async def test_redis_lease_one_claim_per_slot(redis_url: str) -> None:
    prefix = f"asyncproof-test:{uuid.uuid4().hex}"
    leases = [RedisLease(redis_url, prefix=prefix) for _ in range(3)]
    try:
        for slot in range(3):
            claims = await asyncio.gather(
                *(lease.claim("job", slot, ttl=5) for lease in leases for _ in range(3))
            )
            assert sum(claims) == 1
        ttl = await leases[0].client.pttl(f"{prefix}:job:0")
        assert 0 < ttl <= 5000
    finally:
        keys = [key async for key in leases[0].client.scan_iter(f"{prefix}*")]
        if keys:
            await leases[0].client.delete(*keys)
        for lease in leases:
            await lease.close()


async def test_periodic_job_runs_once_per_interval_among_workers(tmp_path: Path) -> None:
    runs: list[int] = []

    async def job() -> str:
        runs.append(1)
        return "done"

    jobs = [
        PeriodicJob("purge", job, SqliteLease(str(tmp_path / "lease.sqlite3")), interval=0.5)
        for _ in range(3)
    ]
    tasks = [asyncio.create_task(j.run_forever()) for j in jobs]
    await asyncio.sleep(2.6)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert 4 <= len(runs) <= 6  # one per 0.5 s slot, not three
    assert sum(j.runs for j in jobs) == len(runs)


async def test_a_failing_job_does_not_stop_the_next_runs(tmp_path: Path) -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    job = PeriodicJob("flaky", flaky, SqliteLease(str(tmp_path / "lease.sqlite3")), interval=0.3)
    task = asyncio.create_task(job.run_forever())
    await asyncio.sleep(1.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls >= 3
