"""SQLite shared by several processes (Gunicorn workers, the Celery worker): switching to WAL safely."""

from __future__ import annotations

import time
from collections.abc import Callable


def use_wal(pragma: Callable[[str], object], deadline: float = 10.0) -> None:
    """Put the database in WAL mode; ``pragma(sql)`` runs a statement and returns its first value.

    Switching the journal mode needs the database to itself: a process that opens it while another
    one is switching gets "database is locked" at once, whatever its busy timeout. WAL is stored in
    the file, so once any process has switched, every later attempt succeeds: retry until then.
    """
    end = time.monotonic() + deadline
    while True:
        try:
            pragma("PRAGMA journal_mode=WAL")
            return
        except Exception as error:  # sqlite3's, or the async driver's wrapper of it
            if "locked" not in str(error) or time.monotonic() > end:
                raise
        time.sleep(0.05)
