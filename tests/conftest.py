from __future__ import annotations

import pytest

from tests.services import POSTGRES_URL, REDIS_URL, require_port


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """An asyncpg URL of the real PostgreSQL (database ``test``); skips when it is not running."""
    require_port("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    require_port("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
