"""The app's database schema as Alembic migrations, shipped in the package and set up here: no
``alembic.ini``, the URL is the settings' ``sqlalchemy_url`` (aiosqlite or asyncpg).

Whoever starts the server brings the schema to the newest revision once, before any worker serves:
Gunicorn's ``on_starting`` hook (``app/gunicorn_conf.py``), ``asyncproof serve --server uvicorn``, or
``python -m asyncproof.app.migrations`` as a deployment step. Each worker's lifespan then only checks
that the schema is current (two reads); an app used in-process (tests) migrates there instead.

Every run that may change the schema holds a lock of the database for its whole transaction
(PostgreSQL: an advisory lock; SQLite: the write lock of ``BEGIN IMMEDIATE``) and decides what to do
only once it has it, so any number of processes, servers or deployments may start at once: the
first migrates, the others find the schema current. A database that ``create_all`` made before there
were migrations (the tables, no ``alembic_version``) is adopted: stamped at the baseline revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncproof.app.data import Base, make_engine

if TYPE_CHECKING:
    from asyncproof.app.settings import Settings

__all__ = [
    "BASELINE",
    "BASELINE_TABLE",
    "Migrated",
    "config",
    "ensure_schema",
    "head",
    "upgrade",
    "upgrade_database",
]

log = logging.getLogger("asyncproof.app.migrations")

HERE = Path(__file__).resolve().parent
# The revision that matches the schema create_all made before there were migrations: its table.
BASELINE, BASELINE_TABLE = "0001", "items"
# PostgreSQL advisory locks are per database: this only has to differ from other locks of the same
# database. (The bytes of "asyncpro".)
LOCK_KEY = 0x6173796E6370726F

Action = Literal["created", "adopted", "upgraded", "current", "newer"]


@dataclass(frozen=True)
class Migrated:
    """What a run found and did: ``created`` (empty database), ``adopted`` (create_all's tables,
    stamped, then upgraded), ``upgraded``, ``current`` (nothing to do), ``newer`` (the database is at a
    revision this release does not know: left alone)."""

    action: Action
    revision: str

    def __str__(self) -> str:
        return f"{self.action} (revision {self.revision})"


def config() -> Config:
    """Alembic's configuration for the app's migrations (Alembic's command functions take it)."""
    cfg = Config(stdout=sys.stdout)  # the current one: Alembic's default is bound at its import
    cfg.set_main_option("script_location", str(HERE))
    return cfg


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    """The newest revision of this release."""
    found = _script().get_current_head()
    if found is None:
        raise RuntimeError(f"no migrations in {HERE / 'versions'}")
    return found


def _at_head(connection: Connection) -> bool:
    """Whether the version table names this release's head and the models' tables are there (a
    version row beside none of them is left from tables dropped by hand)."""
    if MigrationContext.configure(connection).get_current_heads() != (head(),):
        return False
    return bool(set(inspect(connection).get_table_names()) & set(Base.metadata.tables))


def _lock(connection: Connection) -> None:
    """Hold the database's migration lock until the transaction ends; ``connection`` must be fresh."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    elif dialect == "sqlite":
        # The driver would begin a deferred transaction only at the first write; an immediate one
        # takes the write lock now, and the others wait for it (busy_timeout, set by make_engine).
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        log.warning("no migration lock for %s: start one process at a time", dialect)


def _migrate(connection: Connection) -> Migrated:
    _lock(connection)
    # Everything below is decided under the lock: a process that waited for it sees what the one
    # before it committed.
    current = MigrationContext.configure(connection).get_current_heads()
    target = head()
    if set(current) - {revision.revision for revision in _script().walk_revisions()}:
        # A newer release migrated it (a rollback, or old workers beside new ones): not ours to touch.
        return Migrated("newer", ",".join(current))
    if _at_head(connection):
        return Migrated("current", target)

    cfg = config()
    cfg.attributes["connection"] = connection  # env.py runs on it, inside this transaction
    tables = set(inspect(connection).get_table_names())
    if current == (target,):
        # The version row outlived the app's tables (dropped by hand): create them again.
        log.warning("alembic_version is at %s but the app's tables are gone: creating them", target)
        command.stamp(cfg, "base")
        current = ()
    action: Action = "upgraded"
    if not current:
        action = "adopted" if BASELINE_TABLE in tables else "created"
        if action == "adopted":
            command.stamp(cfg, BASELINE)
    command.upgrade(cfg, "head")
    return Migrated(action, target)


# Alembic keeps the running migration in module globals (alembic.context, alembic.op): two migrations
# in one process at once (two in-process apps starting together) would mix them up.
_in_progress = threading.Lock()


@contextlib.asynccontextmanager
async def _one_in_this_process() -> AsyncIterator[None]:
    while not _in_progress.acquire(blocking=False):  # noqa: ASYNC110  (a threading lock: no Event to wait on)
        await asyncio.sleep(0.01)  # not acquire(): that would block this event loop
    try:
        yield
    finally:
        _in_progress.release()


async def upgrade(engine: AsyncEngine) -> Migrated:
    """Bring the database to the newest revision under the migration lock; safe to run anywhere, any
    number of times at once."""
    async with _one_in_this_process(), engine.connect() as connection:
        migrated = await connection.run_sync(_migrate)
        await connection.commit()
    if migrated.action == "newer":
        log.warning("the database schema is at %s, newer than this release's %s", migrated.revision, head())
    elif migrated.action != "current":
        log.info("database schema %s", migrated)
    return migrated


async def ensure_schema(engine: AsyncEngine) -> Migrated:
    """A worker's start: two reads when the schema is current (the server migrated it before the
    workers started), else :func:`upgrade` (an app used in-process, or a server started without it)."""
    async with engine.connect() as connection:
        if await connection.run_sync(_at_head):
            return Migrated("current", head())
    return await upgrade(engine)


def upgrade_database(settings: Settings) -> Migrated:
    """:func:`upgrade` for a launcher (no event loop running): raises :class:`RuntimeError` with a
    message that names the database."""

    async def run() -> Migrated:
        engine = make_engine(settings)
        try:
            return await upgrade(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except Exception as error:
        where = make_url(settings.sqlalchemy_url).render_as_string(hide_password=True)
        raise RuntimeError(f"could not migrate the database schema of {where}: {error}") from error
