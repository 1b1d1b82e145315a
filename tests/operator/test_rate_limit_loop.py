"""Rate limits through the operator, against kmock and a real redis-server: the limits reach
the workers' env, are declared in Redis, a pool that mostly waits on one stops scaling up
(Scaling RateLimited), and a pool declaring other rates for a name is Degraded."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis.asyncio as aioredis
from operator_harness import NAMESPACE, Cluster, OperatorThread, eventually, pool_manifest

from agentpool.protocol import TaskQueue, WorkerInfo
from agentpool.ratelimit import LimitConfig, RateLimiter
from agentpool_operator.scaling_plan import HISTORY_ANNOTATION as HISTORY

LEASE = 120.0


def limit_name() -> str:
    return f"l-{uuid.uuid4().hex[:8]}"


def env_of(cluster: Cluster, pool: str) -> dict[str, Any]:
    (container,) = cluster.deployment(pool)["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


async def report(queue: TaskQueue, pod: str, limit: str, busy: float, waited: float) -> None:
    worker = WorkerInfo(pod=pod, instance="i1", concurrency=4,
                        limit_window={"busy": busy, "waited": {limit: waited}})
    await queue.heartbeat(worker, {}, LEASE)


async def test_limits_reach_the_workers_and_are_declared_in_redis(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    name = limit_name()
    limits = [{"name": name, "requestsPerMinute": 500, "tokensPerMinute": 30000}]
    await cluster.create_pool(pool_manifest("rl", redis_url=redis_url, queue=queue_name,
                                            rateLimits=limits))
    env = await eventually(lambda: env_of(cluster, "rl"))
    assert json.loads(env["AGENTPOOL_RATE_LIMITS"]) == [{**limits[0], "burstSeconds": 1.0}]

    async def declared() -> bool:
        state = await RateLimiter(redis, name).state()
        return state.owner == f"{NAMESPACE}/rl"

    await eventually(declared)
    state = await RateLimiter(redis, name).state()
    assert state.config == LimitConfig(name, 500, 30000, 1.0)


async def test_a_pool_waiting_on_its_limit_stops_scaling_up_and_probes_when_waits_stop(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    name = limit_name()
    queue = TaskQueue(redis, queue_name)
    await queue.submit_many([{"n": n} for n in range(40)])
    await report(queue, "rl-1-a", name, busy=100.0, waited=70.0)
    await cluster.create_pool(pool_manifest(
        "rl", redis_url=redis_url, queue=queue_name,
        rateLimits=[{"name": name, "requestsPerMinute": 60}],
        scaling={"minReplicas": 2, "maxReplicas": 10, "tasksPerReplica": 1, "pollSeconds": 0.5,
                 "scaleDownCooldownSeconds": 600},
    ))
    condition = await eventually(
        lambda: (c := cluster.condition("rl", "Scaling"))["reason"] == "RateLimited" and c)
    assert f"rate limit {name} holds the pool" in condition["message"]
    assert "(the backlog asks for 10)" in condition["message"]
    assert cluster.pool("rl")["status"]["rateLimitedBy"] == name
    assert cluster.deployment("rl")["spec"]["replicas"] == 2

    # the limit was raised: the runs no longer wait, the pool grows a step at a time
    await report(queue, "rl-1-a", name, busy=100.0, waited=0.0)
    await eventually(lambda: cluster.deployment("rl")["spec"]["replicas"] == 3)
    condition = await eventually(
        lambda: (c := cluster.condition("rl", "Scaling"))["message"].count("3 replicas can")
        and c)
    assert condition["reason"] == "RateLimited"
    assert "3 replicas can feed it" in condition["message"]
    history = json.loads(cluster.deployment("rl")["metadata"]["annotations"][HISTORY])
    assert (history["rateLimited"], history["rateLimitedSize"]) == (name, 3)


async def test_a_pool_declaring_other_rates_for_a_limit_is_degraded_and_keeps_serving(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    name = limit_name()
    first = LimitConfig(name, requests_per_minute=600)
    await RateLimiter(redis, name).declare(first, "team-a/agents")
    await cluster.create_pool(pool_manifest(
        "rl", redis_url=redis_url, queue=queue_name,
        rateLimits=[{"name": name, "requestsPerMinute": 1000}],
    ))
    degraded = await eventually(
        lambda: (c := cluster.condition("rl", "Degraded"))["status"] == "True" and c)
    assert degraded["reason"] == "RateLimitConflict"
    assert degraded["message"] == (
        f"rate limit '{name}': this pool declares 1000 requests/min, burst 1s, but pool "
        "team-a/agents declared 600 requests/min, burst 1s first; that declaration serves "
        "every pool naming it"
    )
    assert (await RateLimiter(redis, name).state()).config == first
    assert cluster.condition("rl", "QueueReachable")["status"] == "True"
