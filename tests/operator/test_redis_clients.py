"""One Redis client, and one connection pool, per distinct Redis URL, whatever the pool count:
checked on the client objects, on a private redis-server's CLIENT LIST, and in the running
operator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from operator_harness import NAMESPACE, Cluster, OperatorThread, eventually, pool_manifest
from prometheus_client import REGISTRY

from agentpool.redis_server import RedisServer
from agentpool_operator.redis_access import RedisClients


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own: its CLIENT LIST holds only the test's connections."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def observer(private_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    yield client
    await client.aclose()


async def others(observer: aioredis.Redis) -> list[dict[str, Any]]:
    """The server's client connections other than the observer's own."""
    own = await observer.client_id()
    return [c for c in await observer.client_list() if int(c["id"]) != own]


async def databases(observer: aioredis.Redis) -> set[int]:
    """The databases the other connections use."""
    return {int(c["db"]) for c in await others(observer)}


def databases_are(observer: aioredis.Redis, expected: set[int]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await databases(observer) == expected
    return check


def redis_clients_gauge() -> float | None:
    return REGISTRY.get_sample_value("agentpool_operator_redis_clients")


async def test_pools_on_one_redis_share_one_client_and_one_connection(
    private_redis: RedisServer, observer: aioredis.Redis
) -> None:
    clients = RedisClients()
    try:
        shared = [await clients.client("ns", f"pool-{n}", private_redis.url) for n in range(5)]
        shared.append(await clients.client("other-ns", "pool-0", private_redis.url))
        assert all(client is shared[0] for client in shared)
        assert len(clients) == 1
        for client in shared:
            assert await client.ping()
        assert len(await others(observer)) == 1, "one connection serves all six pools"
    finally:
        await clients.close()


async def test_different_urls_or_credentials_get_clients_of_their_own() -> None:
    clients = RedisClients()
    try:
        first = await clients.client("ns", "a", "redis://alice:one@redis:6379/0")
        assert await clients.client("ns", "b", "redis://bob:two@redis:6379/0") is not first
        assert await clients.client("ns", "c", "redis://alice:one@redis:6379/1") is not first
        assert await clients.client("ns", "d", "redis://alice:one@redis:6379/0") is first
        assert len(clients) == 3
    finally:
        await clients.close()
    assert len(clients) == 0


async def test_a_client_is_closed_when_its_last_pool_leaves_or_moves(
    private_redis: RedisServer, observer: aioredis.Redis
) -> None:
    db0, db1 = private_redis.url, private_redis.url.replace("/0", "/1")
    clients = RedisClients()
    try:
        first = await clients.client("ns", "a", db0)
        assert await clients.client("ns", "b", db0) is first
        await first.ping()

        moved = await clients.client("ns", "a", db1)
        assert moved is not first and len(clients) == 2
        assert await clients.client("ns", "b", db0) is first, "b keeps the client it shares"
        await moved.ping()
        assert await databases(observer) == {0, 1}

        await clients.forget("ns", "b")
        assert len(clients) == 1
        await eventually(databases_are(observer, {1}), within=5)

        back = await clients.client("ns", "a", db0)
        assert back is not first, "a new client, not the closed one"
        assert len(clients) == 1, "a's move back closed the db 1 client"
        await back.ping()
        await eventually(databases_are(observer, {0}), within=5)
        await clients.forget("ns", "a")
        assert len(clients) == 0
    finally:
        await clients.close()


async def test_a_clean_up_client_of_its_own_outlives_the_pool_forgetting_its_client(
    private_redis: RedisServer, observer: aioredis.Redis
) -> None:
    """A deleted pool's clean-up runs while its loop ends and forgets the shared client: the
    clean-up's own client is not closed under it, and is closed after it."""
    clients = RedisClients()
    try:
        shared = await clients.client("ns", "a", private_redis.url)
        await shared.ping()
        async with clients.own(private_redis.url) as own:
            assert own is not shared and len(clients) == 1
            await clients.forget("ns", "a")
            assert await own.ping()
        await eventually(databases_are(observer, set()), within=5)
    finally:
        await clients.close()


async def test_the_operator_holds_one_client_for_the_pools_on_one_redis(
    cluster: Cluster, operator: OperatorThread, private_redis: RedisServer,
    observer: aioredis.Redis,
) -> None:
    url = private_redis.url
    await cluster.create_secret("shared-redis", {"url": url})
    names = ("sh-a", "sh-b", "sh-c")
    await cluster.create_pool(pool_manifest("sh-a", redis_url=url))
    await cluster.create_pool(pool_manifest("sh-b", redis_url=url))
    await cluster.create_pool(pool_manifest("sh-c", secret="shared-redis"))
    for name in names:
        await eventually(lambda n=name: cluster.condition(n, "QueueReachable")["status"] == "True")
    assert redis_clients_gauge() == 1
    assert await databases(observer) == {0}

    await cluster.patch_pool("sh-a", {"spec": {"redis": {"url": url.replace("/0", "/1")}}})
    await eventually(lambda: redis_clients_gauge() == 2)
    await eventually(databases_are(observer, {0, 1}), within=5)

    await cluster._send(
        "DELETE", f"/apis/agentpool.dev/v1alpha1/namespaces/{NAMESPACE}/agentpools/sh-a"
    )
    await eventually(lambda: redis_clients_gauge() == 1)
    await eventually(databases_are(observer, {0}), within=5)
