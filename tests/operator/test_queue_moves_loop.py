"""A pool whose queue would move, against kmock and real redis-servers: moved to another Redis,
the tasks left on the old queue are reported (a `QueueLeftBehind` Warning Event and Degraded
until the old queue is empty); another queue name, which a CRD without the rule lets in, is
refused as an invalid spec and the Deployment keeps serving the old queue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from operator_harness import Cluster, OperatorThread, eventually, last_observed, pool_manifest

from agentpool.connection import redis_from_url
from agentpool.models.rules import QUEUE_FIXED
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer

REASON = "QueueLeftBehind"
PASSWORD = "old-s3cret"


def status_of(cluster: Cluster, pool: str) -> dict[str, Any]:
    return dict(cluster.pool(pool).get("status") or {})


def worker_env(cluster: Cluster, pool: str) -> dict[str, Any]:
    [worker] = [c for c in cluster.deployment(pool)["spec"]["template"]["spec"]["containers"]
                if c["name"] == "worker"]
    return {e["name"]: e.get("value") for e in worker["env"]}


async def rounds(pool: str, count: int) -> None:
    """Until `count` more of the pool's rounds ended."""
    for _ in range(count):
        seen = last_observed(pool)
        await eventually(lambda seen=seen: last_observed(pool) > seen)  # type: ignore[misc]


async def test_a_pool_moved_to_another_redis_reports_the_tasks_it_left_until_they_are_gone(
    cluster: Cluster, operator: OperatorThread,
) -> None:
    with RedisServer(password=PASSWORD, appendonly=True) as old, RedisServer() as new:
        admin = redis_from_url(old.url)
        try:
            await cluster.create_secret("moving-redis", {"url": old.url})
            await cluster.create_pool(pool_manifest("moving", secret="moving-redis"))
            await eventually(
                lambda: cluster.condition("moving", "QueueReachable")["status"] == "True")
            left = TaskQueue(admin, "moving")
            await left.submit_many([{"n": n} for n in range(3)])
            # held by a worker of a pod that does not exist: recovery leaves it alone for 30 s
            held = (await left.claim("moving-gone:1", 1, lease_seconds=600)).tasks
            await eventually(lambda: (status_of(cluster, "moving")["queued"],
                                      status_of(cluster, "moving")["inFlight"]) == (2, 1))

            await cluster.patch_pool("moving", {"spec": {"redis": {
                "urlSecretRef": None, "url": new.url}}})
            await eventually(lambda: worker_env(cluster, "moving")["AGENTPOOL_REDIS_URL"]
                             == new.url)
            old_queue = f"'moving' on redis://127.0.0.1:{old.port}/0"
            [warning] = await eventually(lambda: cluster.events(REASON))
            assert warning["type"] == "Warning"
            assert warning["message"].startswith(
                f"the pool's old queue {old_queue}, which the pool served before its Redis "
                "changed, still holds 2 queued and 1 running task(s): no pool serves it now")
            assert PASSWORD not in warning["message"]
            degraded = cluster.condition("moving", "Degraded")
            assert (degraded["status"], degraded["reason"]) == ("True", REASON)
            assert degraded["message"] == warning["message"]
            assert status_of(cluster, "moving")["queued"] == 0  # the new queue's
            await rounds("moving", 3)
            assert len(cluster.events(REASON)) == 1

            # The old Redis cannot be read: the pool says so and stays Degraded.
            await asyncio.to_thread(old.stop)
            unread = await eventually(
                lambda: (c := cluster.condition("moving", "Degraded"))["message"].startswith(
                    f"the pool's old queue {old_queue} cannot be read (") and c)
            assert (unread["status"], unread["reason"]) == ("True", REASON)
            assert PASSWORD not in unread["message"]
            await asyncio.to_thread(old.start)
            await eventually(lambda: "still holds 2 queued and 1 running task(s)"
                             in cluster.condition("moving", "Degraded")["message"])

            # The old queue is emptied (its running task ends, the waiting ones are moved):
            # the pool is no longer Degraded.
            await left.complete(held[0], "done")
            assert await left.cancel_waiting() == 2
            await eventually(lambda: cluster.condition("moving", "Degraded")["status"]
                             == "False")
            assert len(cluster.events(REASON)) == 1
        finally:
            await admin.aclose()


async def test_a_queue_left_empty_goes_unsaid_and_one_served_again_is_no_longer_left(
    cluster: Cluster, operator: OperatorThread,
) -> None:
    with RedisServer() as first, RedisServer() as second:
        admin = redis_from_url(second.url)
        try:
            await cluster.create_pool(pool_manifest("moves", redis_url=first.url))
            await eventually(
                lambda: cluster.condition("moves", "QueueReachable")["status"] == "True")
            await cluster.patch_pool("moves", {"spec": {"redis": {"url": second.url}}})
            await eventually(lambda: worker_env(cluster, "moves")["AGENTPOOL_REDIS_URL"]
                             == second.url)
            await rounds("moves", 3)
            assert cluster.events(REASON) == []
            assert cluster.condition("moves", "Degraded")["status"] == "False"

            await TaskQueue(admin, "moves").submit_many([{"n": 1}, {"n": 2}])
            await eventually(lambda: status_of(cluster, "moves")["queued"] == 2)
            await cluster.patch_pool("moves", {"spec": {"redis": {"url": first.url}}})
            [warning] = await eventually(lambda: cluster.events(REASON))
            assert f"redis://127.0.0.1:{second.port}/0, which the pool served before its " \
                "Redis changed, still holds 2 queued task(s)" in warning["message"]
            assert cluster.condition("moves", "Degraded")["reason"] == REASON

            # Moved back: the queue is served again, its tasks no longer left behind.
            await cluster.patch_pool("moves", {"spec": {"redis": {"url": second.url}}})
            await eventually(lambda: cluster.condition("moves", "Degraded")["status"]
                             == "False")
            assert status_of(cluster, "moves")["queued"] == 2
        finally:
            await admin.aclose()


async def test_a_changed_queue_name_that_the_crd_lets_in_is_refused(
    cluster: Cluster, operator: OperatorThread, redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kmock enforces no CEL rule: a cluster whose CRD predates the one that fixes spec.queue."""
    await cluster.create_pool(pool_manifest("fixed", redis_url=redis_url, queue="jobs-a"))
    await eventually(lambda: status_of(cluster, "fixed").get("queue") == "jobs-a")
    assert worker_env(cluster, "fixed")["AGENTPOOL_QUEUE"] == "jobs-a"

    await cluster.patch_pool("fixed", {"spec": {"queue": "jobs-b"}})
    degraded = await eventually(
        lambda: (c := cluster.condition("fixed", "Degraded"))["reason"] == "InvalidSpec" and c)
    assert degraded["status"] == "True"
    assert QUEUE_FIXED.message in degraded["message"]
    assert "'jobs-a'" in degraded["message"] and "'jobs-b'" in degraded["message"]
    # The update handler refused it too, before any write (kopf logs its permanent failure).
    await eventually(lambda: [r for r in caplog.records if "failed permanently" in r.message
                              and QUEUE_FIXED.message in r.message])
    assert worker_env(cluster, "fixed")["AGENTPOOL_QUEUE"] == "jobs-a"
    assert status_of(cluster, "fixed")["queue"] == "jobs-a"

    await cluster.patch_pool("fixed", {"spec": {"queue": "jobs-a"}})
    await eventually(lambda: cluster.condition("fixed", "Degraded")["status"] == "False")
    assert worker_env(cluster, "fixed")["AGENTPOOL_QUEUE"] == "jobs-a"
    assert operator.alive
