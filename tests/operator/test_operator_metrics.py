"""The operator's /metrics after real rounds against kmock and a real redis-server."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from operator_harness import NAMESPACE, Cluster, OperatorThread, eventually, pool_manifest
from prometheus_client.parser import text_string_to_metric_families

from agentpool.protocol import TaskQueue

Labels = tuple[tuple[str, str], ...]
Scraped = dict[tuple[str, Labels], float]


async def scrape(operator: OperatorThread) -> Scraped:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{operator.settings.port}/metrics"
        async with session.get(url) as response:
            assert response.status == 200
            text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scraped_when(
    operator: OperatorThread, ready: Callable[[Scraped], bool],
) -> Callable[[], Coroutine[Any, Any, Scraped | None]]:
    async def check() -> Scraped | None:
        found = await scrape(operator)
        return found if ready(found) else None
    return check


def pool_labels(pool: str, **extra: str) -> Labels:
    return tuple(sorted({"namespace": NAMESPACE, "pool": pool, **extra}.items()))


async def test_a_pools_figures_bounds_and_health_are_exported(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    queue = TaskQueue(redis, "metrics-jobs")
    await queue.submit({"poison": True})
    [poisoned] = (await queue.claim("w1", 1, 30)).tasks
    await queue.fail(poisoned, "ValueError: bad input", retryable=False)
    await queue.submit_many([{"n": n} for n in range(4)])
    await cluster.create_pool(pool_manifest(
        "metrics-a", redis_url=redis_url, queue="metrics-jobs",
        scaling={"minReplicas": 1, "maxReplicas": 6, "pollSeconds": 1},
    ))
    labels = pool_labels("metrics-a")
    found = await eventually(scraped_when(
        operator, lambda m: m.get(("agentpool_pool_queued", labels)) == 4))
    assert found[("agentpool_pool_min_replicas", labels)] == 1
    assert found[("agentpool_pool_max_replicas", labels)] == 6
    assert found[("agentpool_pool_paused", labels)] == 0
    assert found[("agentpool_pool_poll_seconds", labels)] == 1
    assert found[("agentpool_pool_dead", labels)] == 1
    assert found[("agentpool_pool_tasks_total", pool_labels("metrics-a", event="dead"))] == 1
    assert found[("agentpool_pool_tasks_total", pool_labels("metrics-a", event="submitted"))] == 5
    assert found[("agentpool_pool_tasks_total", pool_labels("metrics-a", event="failed"))] == 1
    assert found[("agentpool_pool_tasks_total", pool_labels("metrics-a", event="expired"))] == 0
    observed = found[("agentpool_operator_pool_last_observed_timestamp_seconds", labels)]
    assert time.time() - 60 < observed <= time.time()
    reachable = pool_labels("metrics-a", type="QueueReachable")
    assert found[("agentpool_pool_condition", reachable)] == 1
    assert found[("agentpool_operator_up", ())] == 1
    assert any(name == "agentpool_operator_info" for name, _ in found)


async def test_reconcile_errors_are_counted_per_pool_and_step(
    cluster: Cluster, operator: OperatorThread, redis_url: str
) -> None:
    foreign = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "metrics-b", "namespace": NAMESPACE},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "other"}},
                 "template": {"metadata": {"labels": {"app": "other"}},
                              "spec": {"containers": [{"name": "x", "image": "other:1"}]}}},
    }
    await cluster.create(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", foreign)
    await cluster.create_pool(pool_manifest("metrics-b", redis_url=redis_url))

    errors = ("agentpool_operator_reconcile_errors_total",
              pool_labels("metrics-b", step="deployment"))
    found = await eventually(scraped_when(operator, lambda m: m.get(errors, 0) >= 1))
    observed = ("agentpool_operator_pool_last_observed_timestamp_seconds",
                pool_labels("metrics-b"))
    assert observed not in found, "a round that found a problem is not a clean observation"
