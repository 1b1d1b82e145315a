"""A full Redis, against kmock and a real redis-server: the pool says so (Degraded RedisFull,
one Warning Event) while Redis refuses writes, and stops saying so once memory is freed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from operator_harness import Cluster, OperatorThread, eventually, pool_manifest

from agentpool.connection import redis_from_url
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer
from agentpool_operator import redis_memory


@pytest.fixture
async def noeviction_redis() -> AsyncIterator[tuple[RedisServer, aioredis.Redis]]:
    with RedisServer(extra_args=("--maxmemory-policy", "noeviction")) as server:
        client = redis_from_url(server.url)
        try:
            yield server, client
        finally:
            await client.aclose()


async def test_a_full_redis_makes_the_pool_degraded_until_memory_is_freed(
    cluster: Cluster, operator: OperatorThread, memory_reads: list[int],
    noeviction_redis: tuple[RedisServer, aioredis.Redis],
) -> None:
    server, admin = noeviction_redis
    queue = TaskQueue(admin, "fu")
    await cluster.create_pool(pool_manifest("fu", redis_url=server.url))
    await eventually(lambda: cluster.condition("fu", "Degraded")["reason"] == "AsExpected")

    used = int((await admin.info("memory"))["used_memory"])
    await admin.config_set("maxmemory", used - 100_000)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        await queue.submit({"n": 1})

    degraded = await eventually(
        lambda: (c := cluster.condition("fu", "Degraded"))["reason"] == "RedisFull" and c)
    assert degraded["status"] == "True"
    assert degraded["message"].startswith("Redis is full: used memory ")
    assert "submits and new runs are refused, runs in progress go on" in degraded["message"]
    assert degraded["message"].endswith("or raise maxmemory")
    assert cluster.condition("fu", "QueueReachable")["status"] == "True"
    assert cluster.condition("fu", "Ready")["reason"] != "RedisFull"
    warning = (await eventually(lambda: cluster.events("RedisFull")))[0]
    assert warning["type"] == "Warning"
    assert warning["message"].startswith("Redis is full: used memory ")

    # Rounds go on while Redis stays full: no second Event.
    seen = len(memory_reads)
    await eventually(lambda: len(memory_reads) >= seen + 2)
    assert cluster.condition("fu", "Degraded")["reason"] == "RedisFull"
    assert len(cluster.events("RedisFull")) == 1

    await admin.config_set("maxmemory", 0)
    await queue.submit({"n": 1})
    cleared = await eventually(
        lambda: (c := cluster.condition("fu", "Degraded"))["status"] == "False" and c)
    assert cleared["reason"] == "AsExpected"
    assert len(cluster.events("RedisFull")) == 1
    recovered = await eventually(lambda: cluster.events("Recovered"))
    assert any(e["message"].startswith("Degraded: ") for e in recovered)


async def test_one_info_read_a_round_judges_fullness_and_the_policy(
    memory_reads: list[int], noeviction_redis: tuple[RedisServer, aioredis.Redis],
) -> None:
    server, admin = noeviction_redis
    await admin.acl_setuser("noinfo", enabled=True, passwords=["+pw"], keys=["*"],
                            commands=["+@all", "-info"])
    refused = redis_from_url(f"redis://noinfo:pw@127.0.0.1:{server.port}/0")
    check = redis_memory.MemoryCheck()
    try:
        assert await check.current(admin, now=2.0) == (None, None)
        assert len(memory_reads) == 1

        used = int((await admin.info("memory"))["used_memory"])
        await admin.config_set("maxmemory", used - 100_000)
        await admin.config_set("maxmemory-policy", "allkeys-lru")
        evicting, full = await check.current(admin, now=4.0)
        assert evicting is not None and evicting.reason == "RedisEvictsKeys"
        assert full is None, "an evicting Redis at its limit deletes keys: it is not full"
        await admin.config_set("maxmemory-policy", "noeviction")
        evicting, full = await check.current(admin, now=6.0)
        assert evicting is None and full is not None and full.reason == "RedisFull"
        assert len(memory_reads) == 3, "one read a round"
        other_pool = redis_memory.MemoryCheck()
        assert await other_pool.current(admin, now=6.5) == (None, full)
        assert len(memory_reads) == 3, "pools on one Redis share a read under a second old"

        # A read that fails keeps the last verdict; the next good one judges again.
        assert await check.current(refused, now=8.0) == (None, full)
        await admin.config_set("maxmemory", 0)
        assert await check.current(admin, now=10.0) == (None, None)
    finally:
        await admin.config_set("maxmemory", 0)
        await refused.aclose()
