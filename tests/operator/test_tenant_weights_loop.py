"""Tenants' weights through the operator, against kmock and a real redis-server: the weights
of `spec.tenants` reach the queue, follow edits of the spec and come back when Redis lost
them, and a pool without weights clears any left on its queue."""

from __future__ import annotations

import redis.asyncio as aioredis
from operator_harness import Cluster, OperatorThread, eventually, pool_manifest

from agentpool.protocol import TaskQueue


async def test_the_spec_weights_reach_the_queue_and_follow_its_edits(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    await cluster.create_pool(pool_manifest(
        "tw", redis_url=redis_url, queue=queue_name,
        tenants=[{"name": "gold", "weight": 4}, {"name": "Acme Corp", "weight": 2}],
        scaling={"pollSeconds": 0.5}))

    async def weights_are(expected: dict[str, int]) -> bool:
        return await queue.tenant_weights() == expected

    await eventually(lambda: weights_are({"gold": 4, "Acme Corp": 2}))
    await redis.delete(queue.prefix + "weights")  # a Redis that lost them
    await eventually(lambda: weights_are({"gold": 4, "Acme Corp": 2}))
    await cluster.patch_pool("tw", {"spec": {"tenants": [{"name": "gold", "weight": 9}]}})
    await eventually(lambda: weights_are({"gold": 9}))
    await cluster.patch_pool("tw", {"spec": {"tenants": []}})
    await eventually(lambda: weights_are({}))
    assert not await redis.exists(queue.prefix + "weights")


async def test_a_pool_without_weights_clears_those_left_on_its_queue(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    await queue.set_tenant_weights({"stale": 5})
    await cluster.create_pool(pool_manifest("tw", redis_url=redis_url, queue=queue_name,
                                            scaling={"pollSeconds": 0.5}))

    async def cleared() -> bool:
        return await queue.tenant_weights() == {}

    await eventually(cleared)


async def test_a_weight_written_by_hand_comes_back_to_the_spec_and_scaling_goes_on(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    """A value Redis holds that is no weight (" 3", a superscript digit) is replaced by the
    spec's, and the round goes on to scale the pool."""
    queue = TaskQueue(redis, queue_name)
    await redis.hset(queue.prefix + "weights", mapping={"gold": "\u00b2", "x": " 3"})
    await queue.submit_many([{"n": n} for n in range(8)])
    await cluster.create_pool(pool_manifest(
        "tw", redis_url=redis_url, queue=queue_name, tenants=[{"name": "gold", "weight": 4}],
        scaling={"pollSeconds": 0.5, "minReplicas": 1, "maxReplicas": 3,
                 "tasksPerReplica": 2}))

    async def replaced() -> bool:
        raw = await redis.hgetall(queue.prefix + "weights")
        return raw == {b"gold": b"4"}

    await eventually(replaced)
    await eventually(lambda: cluster.deployment("tw")["spec"]["replicas"] == 3)
