from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agentpool.redis_server import RedisServer

E2E_DIR = Path(__file__).resolve().parents[1] / "e2e"
"""The e2e suite's modules (pools, helpers) are checked offline too, imported as e2e/ does."""
if str(E2E_DIR) not in sys.path:
    sys.path.insert(0, str(E2E_DIR))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole session; tests isolate themselves by queue name."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def queue_name() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


REDIS_PASSWORD = "s3cret-pw"


@pytest.fixture(scope="session")
def protected_redis() -> Iterator[RedisServer]:
    """A real redis-server that requires the password REDIS_PASSWORD (``requirepass``)."""
    with RedisServer(password=REDIS_PASSWORD) as server:
        yield server
