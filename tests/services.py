"""Find the real services the integration tests need, or skip (fail under ASYNCPROOF_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import os
import shutil

import pytest

from asyncproof.loadtests.processes import port_open

REQUIRED = os.environ.get("ASYNCPROOF_REQUIRE_SERVICES") == "1"

POSTGRES_URL = os.environ.get(
    "ASYNCPROOF_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("ASYNCPROOF_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def unavailable(reason: str) -> None:
    """Skip the calling test, or fail it when CI requires every service."""
    if REQUIRED:
        pytest.fail(f"{reason} (ASYNCPROOF_REQUIRE_SERVICES=1: a missing service is a failure)")
    pytest.skip(reason)


def require_port(name: str, host: str, port: int) -> None:
    if not port_open(host, port):
        unavailable(f"{name} is not answering on {host}:{port}")


def require_executable(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        unavailable(f"{name} is not installed (Debian: apt-get install {name})")
    assert path is not None
    return path
