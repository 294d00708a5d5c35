"""Request ids: accept a safe incoming ``X-Request-ID`` or make one, and expose it to logging."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from contextvars import ContextVar
from typing import Any

# Holds the id as the bytes that go into the response header; it is decoded only when asked for.
_current: ContextVar[bytes | None] = ContextVar("asyncproof_request_id", default=None)

# Bounded length and a conservative alphabet: the id ends up in log lines and response headers, so
# anything that could split a line or a header is refused. nginx's $request_id (32 hex) passes.
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:+=/~-]{1,128}")


def get_request_id() -> str | None:
    """The id of the request being handled in this context, or ``None`` outside a request."""
    value = _current.get()
    return None if value is None else value.decode("ascii")


# ``safe_request_id(value)`` is a match (the id is safe to reuse as is) or None.
safe_request_id = _SAFE_ID.fullmatch


class RequestIdGenerator:
    """32 hex characters, like nginx's ``$request_id``: a random per-process prefix and a counter.

    Unique across workers and restarts (80 random bits per process) and much cheaper than a uuid4
    per request.
    """

    def __init__(self) -> None:
        self.reseed()
        # A forked worker must not repeat its parent's ids.
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self._prefix = os.urandom(10).hex().encode("ascii")
        self._counter = itertools.count(1)

    def next_id(self) -> bytes:
        return self._prefix + b"%012x" % (next(self._counter) & 0xFFFFFFFFFFFF)


# A bound method: cheaper per request than calling the generator object itself.
new_request_id = RequestIdGenerator().next_id


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (or ``"-"``) to every record, for any formatter to use.

    A record that names its request already (``extra={"request_id": ...}``, as the stall watchdog's,
    logged from a thread outside the request's context) keeps it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = get_request_id() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any ``extra`` fields."""

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or get_request_id(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)
