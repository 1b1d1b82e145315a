"""A full primary of a Redis Cluster concerns the pools whose queue it holds, not every pool
on the Cluster (agentpool_operator.redis_memory): the verdict, reading it from a real
3-primary Cluster whose queue slot moves to a full primary, and two pools on that Cluster
against kmock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis
from operator_harness import Cluster, OperatorThread, eventually, pool_manifest

from agentpool.connection import redis_from_url
from agentpool.protocol import TaskQueue
from agentpool.protocol.ids import key_prefix
from agentpool.redis_server import RedisCluster, RedisServer, sentinel_admin
from agentpool_operator.redis_memory import (
    FULL_REASON,
    MemoryCheck,
    NodeMemory,
    full_problem,
    queue_nodes,
)

MIB = 1024**2
QUEUE = "per-shard"


def test_only_the_nodes_that_hold_the_queue_are_judged() -> None:
    nodes = {
        "10.0.0.1:7000": NodeMemory(used=1 * MIB, maxmemory=4 * MIB),
        "10.0.0.2:7001": NodeMemory(used=5 * MIB, maxmemory=4 * MIB),
        "10.0.0.3:7002": NodeMemory(used=4 * MIB, maxmemory=4 * MIB),
    }
    assert full_problem(nodes, serving={"10.0.0.1:7000"}) is None
    assert full_problem(nodes, serving=set()) is None
    problem = full_problem(nodes, serving={"10.0.0.2:7001"})
    assert problem is not None and problem.reason == FULL_REASON
    assert problem.message.startswith(
        "Redis is full on 10.0.0.2:7001, which holds the queue (used memory 5.00 MiB of "
        "maxmemory 4.00 MiB): submits and new runs are refused, runs in progress go on")
    assert "10.0.0.3:7002" not in problem.message


def test_a_redis_that_is_no_cluster_is_judged_whole(redis_server: RedisServer) -> None:
    client = redis_from_url(redis_server.url)
    assert queue_nodes(client, QUEUE) is None
    assert full_problem({"redis": NodeMemory(used=5 * MIB, maxmemory=4 * MIB)},
                        queue_nodes(client, QUEUE)) is not None


@pytest.fixture(scope="module")
def shards() -> Iterator[RedisCluster]:
    """A Cluster of its own: the tests move a slot and fill primaries."""
    with RedisCluster(primaries=3) as started:
        yield started


@pytest.fixture
def unlimited(shards: RedisCluster) -> Iterator[RedisCluster]:
    """The Cluster, its primaries' maxmemory taken off again after the test."""
    try:
        yield shards
    finally:
        for port in shards.ports:
            with sentinel_admin(port) as node:
                node.config_set("maxmemory", 0)


@pytest.fixture
async def client(unlimited: RedisCluster) -> AsyncIterator[aioredis.RedisCluster]:
    connected = redis_from_url(unlimited.url)
    await TaskQueue(connected, QUEUE).submit({"n": 1})
    try:
        yield connected
    finally:
        await connected.aclose()


def queue_owner(shards: RedisCluster, queue: str = QUEUE) -> int:
    """The port of the primary that the Cluster says holds the queue's slot."""
    with sentinel_admin(shards.ports[0]) as node:
        slot = node.execute_command("CLUSTER", "KEYSLOT", key_prefix(queue) + "queued")
        for first, last, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return int(primary[1])
    raise AssertionError(f"slot {slot} is not covered")


def fill(port: int) -> None:
    """Make the primary full: maxmemory below what it uses, noeviction."""
    with sentinel_admin(port) as node:
        node.config_set("maxmemory-policy", "noeviction")
        node.config_set("maxmemory", int(node.info("memory")["used_memory"]) // 2)


def move_queue_slot(shards: RedisCluster, source: int, target: int) -> None:
    """Reshard the queue's slot, with its keys, from one primary to another."""
    nodes = {port: sentinel_admin(port) for port in shards.ports}
    try:
        ids = {port: node.execute_command("CLUSTER", "MYID") for port, node in nodes.items()}
        slot = nodes[source].execute_command("CLUSTER", "KEYSLOT", key_prefix(QUEUE) + "queued")
        nodes[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        nodes[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        keys = nodes[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        assert keys, "the queue has keys to move"
        nodes[source].execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000,
                                      "KEYS", *keys)
        for port in (target, source, *(p for p in shards.ports if p not in (source, target))):
            nodes[port].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    finally:
        for node in nodes.values():
            node.close()


async def test_a_full_primary_without_the_queue_leaves_the_pool_alone(
    shards: RedisCluster, client: aioredis.RedisCluster,
) -> None:
    owner = queue_owner(shards)
    for port in shards.ports:
        if port != owner:
            fill(port)
    check = MemoryCheck()
    evicting, full = await check.current(client, now=2.0, queue=QUEUE)
    assert (evicting, full) == (None, None)

    fill(owner)
    evicting, full = await check.current(client, now=4.0, queue=QUEUE)
    assert evicting is None and full is not None and full.reason == FULL_REASON
    assert full.message.startswith(f"Redis is full on 127.0.0.1:{owner}, which holds the queue")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        await TaskQueue(client, QUEUE).submit({"n": 2})


async def test_the_verdict_follows_the_queue_slot_to_another_primary(
    shards: RedisCluster, client: aioredis.RedisCluster,
) -> None:
    source = queue_owner(shards)
    target = next(port for port in shards.ports if port != source)
    move_queue_slot(shards, source, target)
    fill(target)
    check = MemoryCheck()

    # The client's slot map still names the source: that round judges it, and does not fail.
    assert await check.current(client, now=2.0, queue=QUEUE) == (None, None)

    # The pool's next command on its queue meets MOVED, which refreshes the map.
    assert await client.exists(key_prefix(QUEUE) + "queued")
    _, full = await check.current(client, now=4.0, queue=QUEUE)
    assert full is not None
    assert full.message.startswith(f"Redis is full on 127.0.0.1:{target}, which holds the queue")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        await TaskQueue(client, QUEUE).submit({"n": 2})


async def test_only_the_pool_whose_queue_is_on_the_full_primary_is_degraded(
    cluster: Cluster, operator: OperatorThread, memory_reads: list[int],
    unlimited: RedisCluster,
) -> None:
    full_queue = "shard-full"
    owner = queue_owner(unlimited, full_queue)
    other_queue = next(name for name in (f"shard-{n}" for n in range(100))
                       if queue_owner(unlimited, name) != owner)
    for name in (full_queue, other_queue):
        await cluster.create_pool(pool_manifest(name, redis_url=unlimited.url))
    for name in (full_queue, other_queue):
        await eventually(lambda name=name: cluster.condition(name, "Degraded")["reason"]
                         == "AsExpected")

    fill(owner)
    degraded = await eventually(
        lambda: (c := cluster.condition(full_queue, "Degraded"))["reason"] == "RedisFull" and c)
    assert degraded["message"].startswith(
        f"Redis is full on 127.0.0.1:{owner}, which holds the queue")
    seen = len(memory_reads)
    await eventually(lambda: len(memory_reads) >= seen + 2)
    assert cluster.condition(other_queue, "Degraded")["reason"] == "AsExpected"
    assert [e["involvedObject"]["name"] for e in cluster.events("RedisFull")] == [full_queue]
