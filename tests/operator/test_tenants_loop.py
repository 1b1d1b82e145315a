"""Tenants' weights and caps through the operator, against kmock and a real redis-server: the
weights and caps of `spec.tenants` and `spec.tenantMaxRunning` reach the queue, follow edits of
the spec and come back when Redis lost them, a pool without weights clears any left on its
queue, and the autoscaler leaves out the tasks a cap holds back."""

from __future__ import annotations

import redis.asyncio as aioredis
from operator_harness import Cluster, OperatorThread, eventually, pool_manifest

from agentpool.protocol import TaskQueue, TenantCaps


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


async def test_the_spec_caps_reach_the_queue_and_follow_its_edits(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    await cluster.create_pool(pool_manifest(
        "tc", redis_url=redis_url, queue=queue_name,
        tenants=[{"name": "gold", "maxRunning": 3}], tenantMaxRunning=2,
        scaling={"pollSeconds": 0.5}))

    async def caps_are(expected: TenantCaps) -> bool:
        return await queue.tenant_caps() == expected

    await eventually(lambda: caps_are(TenantCaps({"gold": 3}, 2)))
    assert await queue.tenant_weights() == {"gold": 1}, "a tenant listed without a weight"
    await redis.delete(queue.prefix + "caps")  # a Redis that lost them
    await eventually(lambda: caps_are(TenantCaps({"gold": 3}, 2)))
    await cluster.patch_pool("tc", {"spec": {"tenantMaxRunning": None}})
    await eventually(lambda: caps_are(TenantCaps({"gold": 3})))
    await cluster.patch_pool("tc", {"spec": {"tenants": None}})
    await eventually(lambda: caps_are(TenantCaps()))
    assert not await redis.exists(queue.prefix + "caps")


async def test_the_autoscaler_leaves_out_the_tasks_a_cap_holds_back(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    """Twenty tasks of one tenant capped at one run: one runs, and the pool is sized for that
    run, not for the nineteen that wait for it (which would need ten replicas)."""
    queue = TaskQueue(redis, queue_name)
    # parked before the pool exists: no round of its may see the twenty queued first
    await queue.set_tenant_caps({}, default=1)
    await queue.submit_many([{"n": n} for n in range(20)], tenant="acme")
    assert len((await queue.claim("elsewhere-0-0:1", 5, 300)).tasks) == 1
    await cluster.create_pool(pool_manifest(
        "tc", redis_url=redis_url, queue=queue_name, tenantMaxRunning=1,
        scaling={"pollSeconds": 0.5, "minReplicas": 0, "maxReplicas": 10,
                 "tasksPerReplica": 2, "scaleUpCooldownSeconds": 0}))
    assert await queue.tenant_caps() == TenantCaps({}, 1)
    scaling = await eventually(lambda: (c := cluster.condition("tc", "Scaling"))[
        "message"].endswith("19 tasks wait for their tenant's cap on runs at once "
                            "(not counted)") and c)
    assert cluster.deployment("tc")["spec"]["replicas"] == 1, scaling
    status = cluster.pool("tc")["status"]
    assert (status["desiredReplicas"], status["capped"], status["queued"]) == (1, 19, 19)
