"""Switching a shared SQLite file to WAL while another process holds it (Gunicorn workers and the
Celery worker start together): the switch waits for its turn instead of failing the worker's boot."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from asyncproof.app.sqlite import use_wal


def test_wal_switch_waits_while_another_connection_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    # no busy timeout: a plain PRAGMA would fail at once with "database is locked"
    newcomer = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        newcomer.execute("PRAGMA journal_mode=WAL")
    started = time.monotonic()
    use_wal(lambda sql: newcomer.execute(sql).fetchone())
    assert 0.1 < time.monotonic() - started < 5
    assert newcomer.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    newcomer.close()
    holder.close()


def test_other_errors_are_not_retried() -> None:
    calls = []

    def broken(sql: str) -> object:
        calls.append(sql)
        raise sqlite3.DatabaseError("file is not a database")

    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        use_wal(broken)
    assert len(calls) == 1


def test_a_lock_that_never_goes_gives_up_at_the_deadline() -> None:
    def locked(sql: str) -> object:
        raise sqlite3.OperationalError("database is locked")

    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        use_wal(locked, deadline=0.3)
    assert time.monotonic() - started < 2
