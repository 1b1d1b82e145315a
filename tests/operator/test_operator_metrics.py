"""The operator's /metrics after real rounds against kmock and a real redis-server."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from operator_harness import NAMESPACE, Cluster, OperatorThread, eventually, pool_manifest
from prometheus_client.parser import text_string_to_metric_families

from agentpool.connection import redis_from_url
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer
from agentpool_operator import metrics as operator_metrics
from agentpool_operator.status import rfc3339

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


async def test_times_missed_while_no_operator_ran_are_timestamped_in_the_first_round(
    cluster: Cluster, operator: OperatorThread, redis_url: str, queue_name: str,
) -> None:
    """A started operator's first round finds the times missed while none ran: before any
    scrape could see it at 0, its counter is at 1, and `increase()` would see no rise. The
    alert reads the timestamp, the time they were found."""
    now = datetime.now(UTC)
    missed, cursor = now - timedelta(minutes=30), now - timedelta(hours=2)
    manifest = pool_manifest(
        "metrics-missed", redis_url=redis_url, queue=queue_name,
        schedules=[{"name": "nightly", "cron": f"{missed.minute} {missed.hour} * * *"}])
    manifest["status"] = {"schedules": [{"name": "nightly", "nextScheduleTime": rfc3339(cursor)}]}
    labels = pool_labels("metrics-missed", schedule="nightly")
    stamp = ("agentpool_operator_schedule_last_missed_timestamp_seconds", labels)
    before = time.time()
    await cluster.create_pool(manifest)
    found = await eventually(scraped_when(operator, lambda m: stamp in m))
    assert before <= found[stamp] <= time.time()
    assert found[("agentpool_operator_schedule_times_missed_total", labels)] == 1


async def test_a_lost_queue_is_timestamped_when_it_is_found(
    cluster: Cluster, operator: OperatorThread,
) -> None:
    with RedisServer() as server:
        admin = redis_from_url(server.url)
        try:
            await cluster.create_pool(pool_manifest("metrics-lost", redis_url=server.url,
                                                    queue="metrics-lost"))
            labels = pool_labels("metrics-lost")
            counter = ("agentpool_operator_queue_data_lost_total", labels)
            stamp = ("agentpool_operator_queue_last_data_lost_timestamp_seconds", labels)
            await TaskQueue(admin, "metrics-lost").submit({"n": 1})
            found = await eventually(scraped_when(
                operator, lambda m: m.get(("agentpool_pool_queued", labels)) == 1))
            assert found[counter] == 0
            assert stamp not in found, "no loss yet, no timestamp"
            before = time.time()
            await admin.flushall()
            found = await eventually(scraped_when(operator, lambda m: stamp in m))
            assert before <= found[stamp] <= time.time()
            assert found[counter] == 1
        finally:
            await admin.aclose()


# -- counters at 0 before their first event: increase() and rate() see no rise in a series
# whose first sample is already its first count (40 tasks requeued would show 0) ----------


def expected_at_zero() -> set[tuple[str, tuple[str, ...]]]:
    """Every series of a pool's counters with fixed label values, by the documented sets."""
    one = [("",)]
    return {
        (name, labels) for name, label_sets in (
            ("agentpool_operator_scale_decisions_total", itertools.product(
                operator_metrics.SCALE_DIRECTIONS, operator_metrics.SCALE_REASONS)),
            ("agentpool_operator_pod_starts_total", one),
            ("agentpool_operator_pods_replaced_total", one),
            ("agentpool_operator_drains_requested_total",
             [(p,) for p in operator_metrics.DRAIN_PURPOSES]),
            ("agentpool_operator_tasks_requeued_total",
             [(c,) for c in operator_metrics.REQUEUE_CAUSES]),
            ("agentpool_operator_tasks_dead_lettered_total",
             [(c,) for c in operator_metrics.REQUEUE_CAUSES]),
            ("agentpool_operator_reconcile_errors_total",
             [(s,) for s in operator_metrics.RECONCILE_STEPS]),
            ("agentpool_operator_queue_data_lost_total", one),
        ) for labels in label_sets
    }


EXTRA_LABEL = ("direction", "reason", "purpose", "cause", "step")


Counters = dict[tuple[str, tuple[str, ...]], float]


async def pool_counters(operator: OperatorThread, pool: str) -> Counters:
    """The pool's series: (name, its values of EXTRA_LABEL, or ("",)) -> value."""
    found: Counters = {}
    for (name, labels), value in (await scrape(operator)).items():
        named = dict(labels)
        if named.get("namespace") == NAMESPACE and named.get("pool") == pool:
            extra = tuple(named[k] for k in EXTRA_LABEL if k in named)
            found[name, extra or ("",)] = value
    return found


async def test_a_pools_counters_are_at_zero_after_its_first_round_and_go_with_the_pool(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    pool = f"zero-{uuid.uuid4().hex[:8]}"
    await cluster.create_pool(pool_manifest(
        pool, redis_url=redis_url, queue=queue_name,
        scaling={"minReplicas": 1, "maxReplicas": 3, "pollSeconds": 1}))

    async def first_round() -> Counters | None:
        found = await pool_counters(operator, pool)
        observed = ("agentpool_operator_pool_last_observed_timestamp_seconds", ("",))
        return found if observed in found else None

    found = await eventually(first_round)
    counters = {k: v for k, v in found.items() if k[0] in {n for n, _ in expected_at_zero()}}
    assert set(counters) == expected_at_zero()
    assert set(counters.values()) == {0}, {k: v for k, v in counters.items() if v}

    # the same series then counts the pool's first scale-up: a rise from 0
    await TaskQueue(redis, queue_name).submit_many([{"n": n} for n in range(10)])
    up = ("agentpool_operator_scale_decisions_total", ("up", "backlog"))

    async def scaled() -> bool:
        return (await pool_counters(operator, pool)).get(up) == 1

    await eventually(scaled)

    await cluster.delete_pool(pool)

    async def gone() -> bool:
        return await pool_counters(operator, pool) == {}

    await eventually(gone)
