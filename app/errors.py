"""Dependency outages answer 503, never 500.

A request that needs the database, the Redis task store or the broker while it is down gets
``503 Service Unavailable`` with a JSON ``detail`` naming the dependency and a ``Retry-After``, within
that dependency's own timeout: the outage is the dependency's, the request was fine, and a client (or
Nginx) may try again. Reads that can do without a dependency do (a cache outage falls through to the
database, see :class:`asyncproof.app.data.ReadThrough`).

The data layer names the dependency where it calls it (:func:`unavailable`); the exception handlers
registered by :func:`add_handlers` also catch what escaped that naming, so no driver's connection
error ever becomes a 500.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

RETRY_AFTER_SECONDS = 5


class DependencyUnavailable(Exception):
    """``dependency`` could not be reached or did not answer in time."""

    def __init__(self, dependency: str, error: BaseException | str) -> None:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}".rstrip(": ")
        super().__init__(f"{dependency} is unavailable ({reason})")
        self.dependency = dependency


def connection_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean "the dependency is down or too slow", not "the request is wrong"."""
    import redis.exceptions
    import sqlalchemy.exc

    return (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        sqlalchemy.exc.OperationalError,  # the server went away, refused, or is shutting down
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.TimeoutError,  # no pooled connection free in time
        ConnectionError,  # ConnectionRefusedError and friends, raised by drivers as they connect
        TimeoutError,
        OSError,
    )


# SQLSTATE classes of a server that cannot take the request now (PostgreSQL's errcodes): connection
# exceptions, insufficient resources (too many connections), operator intervention (shutting down,
# cannot connect now), and a database that does not accept connections.
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P", "55000")


def _server_unavailable(error: BaseException) -> bool:
    """A driver error (wrapped by SQLAlchemy as a plain ``DBAPIError``) that says the server cannot
    take connections, as opposed to one about the request (a constraint, bad data)."""
    import sqlalchemy.exc

    if not isinstance(error, sqlalchemy.exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None) or ""
    return sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


@contextlib.asynccontextmanager
async def unavailable(dependency: str) -> AsyncIterator[None]:
    """Re-raise a connection error inside the block as :class:`DependencyUnavailable`."""
    try:
        yield
    except connection_errors() as error:
        raise DependencyUnavailable(dependency, error) from error
    except Exception as error:
        if _server_unavailable(error):
            raise DependencyUnavailable(dependency, error) from error
        raise


def answer(detail: str) -> JSONResponse:
    return JSONResponse(
        {"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


async def _named(request: Request, error: Exception) -> JSONResponse:
    return answer(str(error))


async def _unnamed(request: Request, error: Exception) -> JSONResponse:
    return answer(f"a dependency is unavailable ({type(error).__name__}: {error})")


async def _driver_error(request: Request, error: Exception) -> JSONResponse:
    if _server_unavailable(error):
        return answer(f"the database is unavailable ({type(error).__name__}: {error})")
    raise error  # an error about the request itself: a bug to see, as before


def add_handlers(app: FastAPI) -> None:
    import sqlalchemy.exc

    app.add_exception_handler(DependencyUnavailable, _named)
    handler: Any = _unnamed
    for error in connection_errors():
        if error is not OSError:  # too broad to answer for everything; the data layer names its own
            app.add_exception_handler(error, handler)
    driver: Any = _driver_error
    app.add_exception_handler(sqlalchemy.exc.DBAPIError, driver)
