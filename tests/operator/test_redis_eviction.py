"""Whether the pool's Redis may evict its keys: the verdict, and reading it from real servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from agentpool.connection import redis_from_url
from agentpool.redis_server import RedisServer
from agentpool_operator.redis_memory import (
    EVICTION_REASON,
    MemoryCheck,
    eviction_problem,
    policies_of,
    read_memory_info,
)


def test_noeviction_everywhere_is_no_problem() -> None:
    assert eviction_problem({"redis": "noeviction"}) is None
    assert eviction_problem({"a:1": "noeviction", "b:2": "noeviction"}) is None


@pytest.mark.parametrize(("policy", "lost"), [
    ("allkeys-lru", "queued and running tasks can be lost"),
    ("allkeys-random", "queued and running tasks can be lost"),
    ("volatile-lru", "finished tasks' results and events, idempotency keys"),
    ("volatile-ttl", "finished tasks' results and events, idempotency keys"),
])
def test_an_evicting_policy_is_named_with_what_it_can_cost(policy: str, lost: str) -> None:
    problem = eviction_problem({"redis": policy})
    assert problem is not None and problem.reason == EVICTION_REASON
    assert f"(maxmemory-policy {policy})" in problem.message
    assert lost in problem.message
    assert problem.message.endswith("set maxmemory-policy noeviction")


def test_a_cluster_names_the_nodes_that_evict() -> None:
    problem = eviction_problem({"n1:7000": "noeviction", "n2:7001": "allkeys-lfu",
                                "n3:7002": "noeviction"})
    assert problem is not None
    assert "(maxmemory-policy allkeys-lfu on n2:7001)" in problem.message


@pytest.fixture
def evicting_redis() -> Iterator[RedisServer]:
    with RedisServer(extra_args=("--maxmemory-policy", "allkeys-lru")) as server:
        yield server


async def test_the_policy_is_read_from_a_real_server_each_round(
    evicting_redis: RedisServer,
) -> None:
    client = redis_from_url(f"redis://127.0.0.1:{evicting_redis.port}/0")
    admin = redis.Redis(port=evicting_redis.port)
    try:
        per_node = await read_memory_info(client)
        assert per_node is not None and policies_of(per_node) == {"redis": "allkeys-lru"}
        check = MemoryCheck()
        first, _ = await check.current(client, now=2.0)
        assert first is not None and "allkeys-lru" in first.message
        admin.config_set("maxmemory-policy", "noeviction")
        assert await check.current(client, now=4.0) == (None, None)
    finally:
        await client.aclose()
        admin.close()


async def test_a_redis_that_refuses_info_is_not_judged_and_a_known_verdict_stays(
    evicting_redis: RedisServer,
) -> None:
    admin = redis.Redis(port=evicting_redis.port)
    admin.acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"],
                      commands=["+@all", "-info"])
    limited = redis_from_url(f"redis://limited:pw@127.0.0.1:{evicting_redis.port}/0")
    full = redis_from_url(f"redis://127.0.0.1:{evicting_redis.port}/0")
    try:
        assert await read_memory_info(limited) is None
        assert await MemoryCheck().current(limited, now=6.0) == (None, None)
        check = MemoryCheck()
        known, _ = await check.current(full, now=8.0)
        assert known is not None
        assert await check.current(limited, now=10.0) == (known, None)
    finally:
        await limited.aclose()
        await full.aclose()
        admin.close()
