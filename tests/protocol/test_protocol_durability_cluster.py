"""Durability replicated on a Redis Cluster: a replicated write waits for a replica of the
primary that holds its queue, not for any replica of the cluster.

Real processes: three primaries with one replica each. A replica that does not answer is one
stopped with SIGSTOP. redis-py sends a keyless WAIT to any node; each test below stops the
replica of the queue's own primary, where a WAIT answered by another node would say the
write was replicated.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from protocol_helpers import claim_one, promoted, replica_of
from redis_freeze import frozen

from agentpool.acl import Role, acl_rules, delete_user, password_hash, set_user
from agentpool.connection import node_of_key, redis_from_url
from agentpool.durability import NotReplicated
from agentpool.protocol import TaskQueue, round_trips
from agentpool.redis_server import RedisCluster, RedisServer, sentinel_admin

TIMEOUT = 0.2


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(primaries=3, replicas=1) as started:
        yield started


@pytest.fixture
async def client(cluster: RedisCluster) -> AsyncIterator[aioredis.Redis]:
    on_cluster = redis_from_url(cluster.url)
    yield on_cluster
    await on_cluster.aclose()


def _queue(client: aioredis.Redis, name: str | None = None) -> TaskQueue:
    return TaskQueue(client, name or f"q-{uuid.uuid4().hex[:8]}", durability="replicated",
                     replica_timeout=TIMEOUT)


async def _replica_of_queue(cluster: RedisCluster, client: aioredis.Redis,
                            queue: TaskQueue) -> RedisServer:
    """The replica of the primary that holds `queue`'s slot."""
    return replica_of(cluster, (await node_of_key(client, queue.prefix + "queued")).port)


def _other_replica(cluster: RedisCluster, own: RedisServer) -> RedisServer:
    for server in cluster.servers:
        if server is own:
            continue
        with sentinel_admin(server.port) as node:
            if node.info("replication").get("role") == "slave":
                return server
    raise AssertionError("no other replica")


async def test_a_replicated_submit_waits_for_the_replica_of_its_queues_primary(
        cluster: RedisCluster, client: aioredis.Redis) -> None:
    queue = _queue(client)
    await queue.submit("warm")
    own = await _replica_of_queue(cluster, client, queue)
    with frozen(own), pytest.raises(NotReplicated) as raised:
        await queue.submit("while its replica is stopped")
    assert await queue.get(raised.value.result) is not None
    with frozen(own), pytest.raises(NotReplicated) as many:
        await queue.submit_many(["a", "b"])
    assert len(many.value.result) == 2


async def test_another_shards_stopped_replica_does_not_hold_a_submit_back(
        cluster: RedisCluster, client: aioredis.Redis) -> None:
    queue = _queue(client)
    await queue.submit("warm")
    other = _other_replica(cluster, await _replica_of_queue(cluster, client, queue))
    with frozen(other):
        task_id = await queue.submit("another shard's replica is stopped")
    info = await queue.get(task_id)
    assert info is not None and info.payload == "another shard's replica is stopped"


async def test_a_replicated_completion_waits_for_the_replica_of_its_queues_primary(
        cluster: RedisCluster, client: aioredis.Redis) -> None:
    queue = _queue(client)
    await queue.submit_many(["a", "b"])
    task = await claim_one(queue, "pod:1")
    assert await queue.record([], [(task, '"done"')]) == [True]
    own = await _replica_of_queue(cluster, client, queue)
    other = await claim_one(queue, "pod:1")
    with frozen(own), pytest.raises(NotReplicated) as raised:
        await queue.record([], [(other, '"done"')])
    assert raised.value.result == [True]
    assert await queue.record([], [(other, '"done"')]) == [True]  # sent again: recorded already


async def test_a_wait_answered_by_a_node_that_no_longer_holds_the_slot_counts_no_replica(
        cluster: RedisCluster, client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As when the slot moves during the trip: the WAIT goes to the node the client's map
    named before (here a wrong one, whose own replica answers), the writes follow the slot."""
    queue = _queue(client)
    await queue.submit("warm")
    real_node_of_key = round_trips.node_of_key
    holder = await real_node_of_key(client, queue.prefix + "queued")
    elsewhere = next(node for node in client.get_primaries()  # type: ignore[attr-defined]
                     if node.name != holder.name)
    calls = []

    async def stale_first(redis_client: Any, key: str) -> Any:
        calls.append(key)
        return elsewhere if len(calls) == 1 else await real_node_of_key(redis_client, key)

    monkeypatch.setattr(round_trips, "node_of_key", stale_first)
    with pytest.raises(NotReplicated) as raised:
        await queue.submit("after a move")
    assert len(calls) == 2
    info = await queue.get(raised.value.result)
    assert info is not None and info.payload == "after a move"


async def test_a_pools_users_are_set_and_deleted_on_every_primary_and_replica(
        cluster: RedisCluster, client: aioredis.Redis) -> None:
    """Redis does not replicate ACL users; a replica without them would refuse the pool's
    workers once promoted."""
    user = f"everywhere-{uuid.uuid4().hex[:8]}"
    await set_user(client, user, acl_rules("everywhere", Role.WORKER, [password_hash("pw")]))
    for server in cluster.servers:
        with sentinel_admin(server.port) as node:
            assert user in node.acl_users(), f"{user} missing on {server.port}"
    assert await delete_user(client, user)
    for server in cluster.servers:
        with sentinel_admin(server.port) as node:
            assert user not in node.acl_users()


def test_the_test_cluster_has_a_replica_for_every_primary(cluster: RedisCluster) -> None:
    roles = []
    for server in cluster.servers:
        with redis.Redis(port=server.port) as node:
            roles.append(node.info("replication")["role"])
    assert sorted(roles) == ["master"] * 3 + ["slave"] * 3


async def _until(call: Any, within: float) -> Any:
    """`call()`'s result once it stops raising Redis errors (a client finding the new
    primary), failing after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except (redis.RedisError, NotReplicated):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_work_goes_on_after_the_queues_primary_fails_over() -> None:
    """kill -9 of the primary that holds the queue: its replica takes the slots, the same
    clients find it, every replicated submit acknowledged before the kill is there, and the
    pool's ACL users (set on every node, replicas included: Redis does not replicate users)
    go on submitting and claiming."""
    with RedisCluster(primaries=3, replicas=1, node_timeout_ms=1000) as own:
        admin = redis_from_url(own.url)
        for role in Role:
            await set_user(admin, f"failover-{role.value}",
                           acl_rules("failover", role, [password_hash("pw")]))
        hosts = own.url.removeprefix("redis+cluster://")
        producer = redis_from_url(f"redis+cluster://failover-producer:pw@{hosts}")
        worker = redis_from_url(f"redis+cluster://failover-worker:pw@{hosts}")
        try:
            queue = TaskQueue(producer, "failover", durability="replicated",
                              replica_timeout=1.0)
            before = [await queue.submit({"n": n}) for n in range(20)]
            replica = await _replica_of_queue(own, admin, queue)
            primary = await node_of_key(admin, queue.prefix + "queued")
            next(s for s in own.servers if s.port == primary.port).kill()
            assert await asyncio.to_thread(promoted, replica.port), "the replica was not promoted"
            # The new primary has no replica: later writes do not wait for one.
            after = await _until(lambda: TaskQueue(producer, "failover").submit({"n": 20}), 30)
            claiming = TaskQueue(worker, "failover")
            claimed = set()
            while len(claimed) < 21:
                batch = await _until(lambda: claiming.claim("pod:1", 21, 30.0), 30)
                assert batch.tasks, f"only {len(claimed)} of 21 tasks claimable"
                claimed |= {task.id for task in batch.tasks}
            assert claimed == {*before, after}
            assert (await node_of_key(worker, queue.prefix + "queued")).port == replica.port
        finally:
            for client in (admin, producer, worker):
                await client.aclose()
