from __future__ import annotations

import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agentpool.acl import Role, acl_rules, delete_user, password_hash, set_user
from agentpool.connection import redis_from_url
from agentpool.redis_server import RedisCluster, RedisServer, SentinelGroup
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


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-primary Redis Cluster on loopback ports, started on first use."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelGroup]:
    """A primary, a replica and three sentinels, started on first use (never failed over:
    tests that fail over start their own, so a machine stalled for seconds must not make the
    sentinels fail this one over behind the tests' backs)."""
    with SentinelGroup(down_after_ms=60_000) as group:
        yield group


@pytest.fixture
def redis_mode() -> str:
    """How `redis_url` (and `redis`) reach Redis: "standalone", "sentinel" or "cluster".
    Standalone here; tests/protocol, whose tests must hold on every deployment, overrides it
    with all three."""
    return "standalone"


@pytest.fixture
def redis_url(redis_mode: str, request: pytest.FixtureRequest) -> str:
    server = {"standalone": "redis_server", "sentinel": "redis_sentinel",
              "cluster": "redis_cluster"}[redis_mode]
    url: str = request.getfixturevalue(server).url
    return url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_from_url(redis_url)
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
async def acl_url(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[AclUrl]:
    """Creates a Redis ACL user confined to (queue, role) on the test's Redis and returns its
    URL; the users are deleted after the test."""
    users: list[str] = []

    async def create(queue: str, role: Role) -> str:
        username = f"agentpool:tests:{uuid.uuid4().hex[:8]}:{role.value}"
        password = secrets.token_urlsafe(24)
        await set_user(redis, username, acl_rules(queue, role, [password_hash(password)]))
        users.append(username)
        return with_credentials(redis_url, username, password)

    yield create
    for username in users:
        await delete_user(redis, username)
