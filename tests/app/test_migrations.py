"""The schema as Alembic migrations (app/migrations): created on an empty database, current on every
later run, adopted from create_all, serialised between processes; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from asyncproof.app import migrations
from asyncproof.app.data import Base, Item, make_engine
from asyncproof.app.migrations import Migrated
from asyncproof.app.migrations.__main__ import main
from asyncproof.app.settings import Settings
from tests.app.helpers import settings_for
from tests.databases import empty_database_sync

pytestmark = pytest.mark.anyio

PROCESSES = 4
# A process that migrates when told to, so that all of them reach the database at the same moment.
AT_THE_SIGNAL = """
import sys
from asyncproof.app.migrations import upgrade_database
from asyncproof.app.settings import Settings

settings = Settings(state_dir=sys.argv[1], database_url=sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
print(upgrade_database(settings).action, flush=True)
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """The app's settings on an empty database: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield settings_for(tmp_path)
        return
    with empty_database_sync(request.getfixturevalue("postgres_url"), "asyncproof_migrations") as url:
        yield settings_for(tmp_path, database_url=url)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    made = make_engine(settings)
    try:
        yield made
    finally:
        await made.dispose()


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))


async def versions(engine: AsyncEngine) -> tuple[str, ...]:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda c: MigrationContext.configure(c).get_current_heads())


async def drift(engine: AsyncEngine) -> list[object]:
    """What the database's schema lacks or has beyond the models (``alembic check``)."""

    def compare(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(compare)


async def add_item(engine: AsyncEngine, name: str) -> None:
    async with async_sessionmaker(engine).begin() as session:
        session.add(Item(name=name))


async def item_names(engine: AsyncEngine) -> list[str]:
    async with async_sessionmaker(engine)() as session:
        return list(await session.scalars(select(Item.name).order_by(Item.id)))


async def test_an_empty_database_gets_the_models_tables(engine: AsyncEngine) -> None:
    assert await migrations.upgrade(engine) == Migrated("created", migrations.head())
    assert await tables(engine) == {"alembic_version", *Base.metadata.tables}
    assert await versions(engine) == (migrations.head(),)
    assert await drift(engine) == []  # the revisions make exactly what the models describe
    await add_item(engine, "first")
    assert await item_names(engine) == ["first"]


async def test_every_later_run_finds_the_schema_current(engine: AsyncEngine) -> None:
    await migrations.upgrade(engine)
    await add_item(engine, "kept")
    assert (await migrations.upgrade(engine)).action == "current"
    assert (await migrations.ensure_schema(engine)).action == "current"
    assert await item_names(engine) == ["kept"]


async def test_a_database_made_by_create_all_is_adopted_with_its_rows(engine: AsyncEngine) -> None:
    # what every worker did before there were migrations
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await add_item(engine, "from before")
    assert await versions(engine) == ()

    assert await migrations.ensure_schema(engine) == Migrated("adopted", migrations.head())
    assert await versions(engine) == (migrations.head(),)
    assert await item_names(engine) == ["from before"]
    assert await drift(engine) == []
    assert (await migrations.ensure_schema(engine)).action == "current"


async def test_tables_dropped_by_hand_are_made_again(engine: AsyncEngine) -> None:
    await migrations.upgrade(engine)
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE items"))
    assert (await migrations.ensure_schema(engine)).action == "created"
    await add_item(engine, "again")
    assert await item_names(engine) == ["again"]


async def test_a_revision_of_a_newer_release_is_left_alone(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await migrations.upgrade(engine)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    with caplog.at_level(logging.WARNING, "asyncproof.app.migrations"):
        assert await migrations.ensure_schema(engine) == Migrated("newer", "ffff")
    assert "newer than this release's" in caplog.text
    assert await versions(engine) == ("ffff",)
    await add_item(engine, "still served")


async def test_apps_starting_together_in_one_process_migrate_once(settings: Settings) -> None:
    engines = [make_engine(settings) for _ in range(PROCESSES)]
    try:
        results = await asyncio.gather(*(migrations.ensure_schema(engine) for engine in engines))
        assert sorted(result.action for result in results) == ["created"] + ["current"] * (PROCESSES - 1)
        async with engines[0].connect() as connection:
            assert (await connection.execute(select(func.count()).select_from(Item))).scalar() == 0
    finally:
        for engine in engines:
            await engine.dispose()


def test_processes_starting_together_migrate_once(settings: Settings) -> None:
    command = [sys.executable, "-c", AT_THE_SIGNAL, settings.state_dir, settings.database_url]
    processes = [
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(PROCESSES)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n", process.communicate(timeout=10)[1]
        for process in processes:  # as close together as one thread gets
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert [process.returncode for process in processes] == [0] * PROCESSES, [err for _, err in outputs]
    assert sorted(out.strip() for out, _ in outputs) == ["created"] + ["current"] * (PROCESSES - 1)


def test_the_deployment_step_and_alembic_commands(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ASYNCPROOF_STATE_DIR", settings.state_dir)
    monkeypatch.setenv("ASYNCPROOF_DATABASE_URL", settings.database_url)
    assert main([]) == 0
    assert capsys.readouterr().out == f"database schema created (revision {migrations.head()})\n"
    assert main([]) == 0
    assert capsys.readouterr().out == f"database schema current (revision {migrations.head()})\n"
    assert main(["current"]) == 0
    assert f"{migrations.head()} (head)" in capsys.readouterr().out
    assert main(["check"]) == 0  # the models have no change that lacks a revision
    assert "No new upgrade operations detected" in capsys.readouterr().out


def test_a_database_that_cannot_be_reached_is_named_in_the_error(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, database_url="postgresql+asyncpg://app:secret@127.0.0.1:1/app", db_connect_timeout=1
    )
    with pytest.raises(RuntimeError, match=r"of postgresql\+asyncpg://app:\*\*\*@127.0.0.1:1/app: ") as error:
        migrations.upgrade_database(settings)
    assert "secret" not in str(error.value)
