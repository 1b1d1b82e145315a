from __future__ import annotations

import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agentpool.acl import Role, acl_rules, delete_user, password_hash, set_user
from agentpool.redis_server import RedisServer
from agentpool.urls import with_credentials

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


AclUrl = Callable[[str, Role], Awaitable[str]]


@pytest.fixture
async def acl_url(redis: aioredis.Redis, redis_server: RedisServer) -> AsyncIterator[AclUrl]:
    """Creates a Redis ACL user confined to (queue, role) on the session's redis-server and
    returns its URL; the users are deleted after the test."""
    users: list[str] = []

    async def create(queue: str, role: Role) -> str:
        username = f"agentpool:tests:{uuid.uuid4().hex[:8]}:{role.value}"
        password = secrets.token_urlsafe(24)
        await set_user(redis, username, acl_rules(queue, role, [password_hash(password)]))
        users.append(username)
        return with_credentials(redis_server.url, username, password)

    yield create
    for username in users:
        await delete_user(redis, username)
