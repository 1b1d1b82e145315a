"""Recovery by the running operator: pod events and rounds against kmock and a real redis-server.

kmock runs no controllers, so the tests create the worker pods themselves (with the pool's
labels) and lease tasks in Redis under worker ids `<pod>:<instance>`, as workers would.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from kubernetes.client.exceptions import ApiException
from operator_harness import (
    NAMESPACE,
    Cluster,
    OperatorThread,
    eventually,
    last_observed,
    pool_manifest,
)
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from agentpool.protocol import (
    WORKER_LIVENESS_WINDOW,
    RequeueResult,
    TaskQueue,
    WorkerInfo,
    key_prefix,
    worker_id,
)
from agentpool.redis_server import free_port
from agentpool_operator import recovery_actions
from agentpool_operator.context import PoolRecovery
from agentpool_operator.kube import KubeApi
from agentpool_operator.recovery import PodView
from agentpool_operator.recovery_actions import gone_nodes, recover_pod
from agentpool_operator.settings import OperatorSettings

PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
LONG_POLL = 30
"""A poll interval no test waits for: what happens within a test came from a pod event."""


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_status(*, ready: bool = True, ready_since: float | None = None, restarts: int = 0,
               started: float | None = None, phase: str = "Running",
               terminated: bool = False, startup_passed: bool = True) -> dict[str, Any]:
    now = time.time()
    state: dict[str, Any] = (
        {"terminated": {"exitCode": 0, "finishedAt": stamp(now)}} if terminated
        else {"running": {"startedAt": stamp(started or now - 300)}}
    )
    return {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                        "lastTransitionTime": stamp(ready_since or now - 300)}],
        "containerStatuses": [{"name": "worker", "restartCount": restarts, "ready": ready,
                               "started": startup_passed, "state": state}],
    }


def pod_manifest(pool: str, name: str, status: dict[str, Any] | None = None,
                 **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "labels": {"agentpool.dev/pool": pool}, **metadata},
        "spec": {"containers": [{"name": "worker", "image": "w:1"}]},
        "status": status or pod_status(),
    }


async def send(cluster: Cluster, method: str, path: str, body: Any = None) -> None:
    headers = {"Content-Type": "application/merge-patch+json"}
    async with cluster.emulator.request(method, path, json=body, headers=headers) as response:
        assert response.status < 300, (response.status, await response.text())


async def patch_status(cluster: Cluster, pod: str, status: dict[str, Any]) -> None:
    await send(cluster, "PATCH", f"{PODS}/{pod}/status", {"status": status})


async def start_pool(cluster: Cluster, redis_url: str, name: str, *, pods: int,
                     poll_seconds: float = 1, **extra: Any) -> None:
    """A fixed-size pool (the scaler leaves its pods alone) after its first round."""
    manifest = pool_manifest(name, redis_url=redis_url, queue=name,
                             poll_seconds=poll_seconds, **extra)
    manifest["spec"]["scaling"].update(minReplicas=pods, maxReplicas=pods)
    await cluster.create_pool(manifest)
    await eventually(lambda: cluster.pool(name)["status"]["conditions"])


async def lease(queue: TaskQueue, pod: str, instance: str, count: int, *,
                started: float | None = None, lease_seconds: float = 60) -> list[str]:
    worker = WorkerInfo(pod=pod, instance=instance, concurrency=count,
                        started=started if started is not None else time.time())
    await queue.heartbeat(worker, {}, lease_seconds)
    await queue.submit_many([{"pod": pod, "n": n} for n in range(count)])
    batch = await queue.claim(worker.worker_id, count, lease_seconds)
    assert len(batch.tasks) == count
    return [task.id for task in batch.tasks]


async def fall_silent(queue: TaskQueue, pod: str, instance: str) -> None:
    """Date the worker's last heartbeat back past the liveness window, as for a worker that
    stopped heart-beating (wedged, or cut off from Redis) while its leases still run."""
    last_seen = time.time() - WORKER_LIVENESS_WINDOW - 30
    await queue.redis.zadd(queue.prefix + "workers", {worker_id(pod, instance): last_seen * 1000})


async def queued(redis: aioredis.Redis, queue: str) -> set[str]:
    return {m.decode() for m in await redis.zrange(key_prefix(queue) + "queued", 0, -1)}


def messages(cluster: Cluster, reason: str) -> list[str]:
    return [str(e["message"]) for e in cluster.events(reason)]


async def posted(cluster: Cluster, reason: str, count: int = 1) -> list[str]:
    """The messages of Events with this reason, once `count` are there (kopf posts later)."""
    await eventually(lambda: len(messages(cluster, reason)) >= count, within=3)
    return messages(cluster, reason)


async def test_deleted_busy_pod_has_its_tasks_back_in_the_queue_at_once(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    await start_pool(cluster, redis_url, "del", pods=2, poll_seconds=LONG_POLL)
    queue = TaskQueue(redis, "del")
    for pod in ("del-a", "del-b"):
        await cluster.create(PODS, pod_manifest("del", pod))
    lost = await lease(queue, "del-a", "i1", 3)
    kept = await lease(queue, "del-b", "i1", 2)

    await send(cluster, "DELETE", f"{PODS}/del-a")

    await eventually(lambda: queued(redis, "del"), within=2)
    assert await queued(redis, "del") == set(lost)
    again = await queue.claim("del-c:i1", 10, 60)
    assert {t.id for t in again.tasks} == set(lost), "requeued tasks are claimable"
    assert await queue.held_by("del-b:i1") == set(kept)
    assert await posted(cluster, "TasksRequeued") == ["requeued 3 tasks of pod del-a (pod deleted)"]
    await eventually(lambda: cluster.pool("del")["status"]["recoveredTasks"] == 3)
    requeued = REGISTRY.get_sample_value(
        "agentpool_operator_tasks_requeued_total",
        {"namespace": "default", "pool": "del", "cause": "pod_deleted"},
    )
    assert requeued == 3
    watches = cluster.requests("GET", "/api/v1/pods")
    assert watches and all(r.params.get("labelSelector") == "agentpool.dev/pool"
                           for r in watches), "only the pools' pods are watched"


async def test_restarted_container_gives_back_only_the_earlier_instance_tasks(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    await start_pool(cluster, redis_url, "rst", pods=1, poll_seconds=LONG_POLL)
    queue = TaskQueue(redis, "rst")
    now = time.time()
    await cluster.create(PODS, pod_manifest("rst", "rst-a", pod_status(started=now - 100)))
    old = await lease(queue, "rst-a", "old", 2, started=now - 99)
    new = await lease(queue, "rst-a", "new", 1, started=now - 9)

    await patch_status(cluster, "rst-a", pod_status(restarts=1, started=now - 10))

    await eventually(lambda: queued(redis, "rst"), within=2)
    assert await queued(redis, "rst") == set(old)
    assert await queue.held_by("rst-a:new") == set(new)
    assert await posted(cluster, "TasksRequeued") == [
        "requeued 2 tasks of pod rst-a (1 earlier instance) (worker container restarted)"
    ]


async def test_silent_pod_unready_past_the_grace_is_drained_deleted_and_requeued(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    await start_pool(
        cluster, redis_url, "unr", pods=1,
        worker={"image": "w:1", "handler": "m:f", "drainSeconds": 1},
        recovery={"unreadyGraceSeconds": 5, "maxUnavailable": 1},
    )
    queue = TaskQueue(redis, "unr")
    held = await lease(queue, "unr-a", "i1", 2)
    await fall_silent(queue, "unr-a", "i1")
    await cluster.create(PODS, pod_manifest("unr", "unr-a", pod_status(
        ready=False, ready_since=time.time() - 60)))

    drains = await eventually(queue.drain_requests, within=3)
    assert set(drains) == {"unr-a"}
    await eventually(lambda: cluster.requests("DELETE", "/pods/unr-a"), within=4)
    await eventually(lambda: queued(redis, "unr"), within=2)
    assert await queued(redis, "unr") == set(held)

    async def no_drain_request() -> bool:
        return await queue.drain_requests() == {}

    # the pod event's requeue clears it, also when a round found the pod gone and moved the tasks
    await eventually(no_drain_request, within=3)

    def unready_seconds(pattern: str, text: str) -> int:
        found = re.fullmatch(pattern, text)
        assert found, text
        return int(found.group(1))

    # 60 s and the time the operator took to see it (a loaded machine has taken 2 s)
    [drain] = await posted(cluster, "DrainRequested")
    assert 60 <= unready_seconds(
        r"asked pod unr-a to drain: unready for (\d+)s, no worker heartbeat", drain) < 120
    [replaced] = await posted(cluster, "PodReplaced")
    assert 60 <= unready_seconds(
        r"deleted pod unr-a to have it replaced: unready for (\d+)s, drained", replaced) < 120
    # the deletion's event, or a round that finds the pod gone first (a loaded machine)
    assert await posted(cluster, "TasksRequeued") in (
        ["requeued 2 tasks of pod unr-a (pod deleted)"],
        ["requeued 2 tasks of pod unr-a (pod no longer exists)"])
    status = await eventually(
        lambda: (s := cluster.pool("unr")["status"]).get("recoveredTasks") == 2 and s
    )
    assert status["replacedPods"] == 1


async def test_operator_restart_between_drain_and_delete_loses_and_duplicates_nothing(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis,
) -> None:
    first = OperatorThread(operator_settings)
    await first.start()
    try:
        await start_pool(
            cluster, redis_url, "rsd", pods=1,
            worker={"image": "w:1", "handler": "m:f", "drainSeconds": 3},
            recovery={"unreadyGraceSeconds": 5, "maxUnavailable": 1},
        )
        queue = TaskQueue(redis, "rsd")
        held = await lease(queue, "rsd-a", "i1", 2)
        await fall_silent(queue, "rsd-a", "i1")
        await cluster.create(PODS, pod_manifest("rsd", "rsd-a", pod_status(
            ready=False, ready_since=time.time() - 60)))
        await eventually(queue.drain_requests, within=3)
        assert not cluster.requests("DELETE", "/pods/rsd-a"), "the drain gets its time"
        await posted(cluster, "DrainRequested")  # kopf drops at its stop what it did not post
    finally:
        await first.stop()
    assert first.error is None, first.error

    second = OperatorThread(operator_settings.model_copy(update={"port": free_port()}))
    await second.start()
    try:
        await eventually(lambda: cluster.requests("DELETE", "/pods/rsd-a"), within=8)
        await eventually(lambda: queued(redis, "rsd"), within=2)
        entries = await redis.zrange(key_prefix("rsd") + "queued", 0, -1)
        assert sorted(m.decode() for m in entries) == sorted(held), "each task queued once"
        assert len(messages(cluster, "DrainRequested")) == 1, "the restart did not ask again"
        assert len(await posted(cluster, "PodReplaced")) == 1
    finally:
        await second.stop()
    assert second.error is None, second.error


async def test_pods_gone_while_no_operator_ran_get_their_tasks_requeued_at_start(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    """out-a died while no operator ran: nobody will ever see an event for it. Its worker
    beat a moment ago and its leases run for ten minutes, so neither the liveness window nor
    lease expiry can explain a requeue within the test. out-b is the pool's live pod, out-c a
    pod outside the pool's watch (its label removed), laptop a worker outside the cluster."""
    caplog.set_level(logging.INFO, logger=recovery_actions.__name__)
    manifest = pool_manifest("out", redis_url=redis_url, queue="out", poll_seconds=LONG_POLL)
    manifest["spec"]["scaling"].update(minReplicas=2, maxReplicas=2)
    await cluster.create_pool(manifest)
    await cluster.create(PODS, pod_manifest("out", "out-b"))
    outside = pod_manifest("out", "out-c")
    outside["metadata"]["labels"] = {"app": "debugging"}
    await cluster.create(PODS, outside)
    queue = TaskQueue(redis, "out")
    lost = await lease(queue, "out-a", "i1", 3, lease_seconds=600)
    kept = await lease(queue, "out-b", "i1", 2, lease_seconds=600)
    unlabelled = await lease(queue, "out-c", "i1", 1, lease_seconds=600)
    external = await lease(queue, "laptop", "i1", 1, lease_seconds=600)

    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        await eventually(lambda: queued(redis, "out"), within=5)
        assert await queued(redis, "out") == set(lost)
        assert await queue.held_by("out-b:i1") == set(kept)
        assert await queue.held_by("out-c:i1") == set(unlabelled), "an existing pod keeps its work"
        assert await queue.held_by("laptop:i1") == set(external), "so does a worker off-cluster"
        assert await posted(cluster, "TasksRequeued") == [
            "requeued 3 tasks of pod out-a (pod no longer exists)"]
        [event] = cluster.events("TasksRequeued")
        assert (event["involvedObject"]["kind"], event["involvedObject"]["namespace"],
                event["involvedObject"]["name"]) == ("AgentPool", NAMESPACE, "out")
        assert any(r.getMessage() == "default/out: TasksRequeued: requeued 3 tasks of pod "
                   "out-a (pod no longer exists)" for r in caplog.records)
        assert not cluster.events("LeasesExpired")
        patches = await eventually(lambda: cluster.requests("PATCH", "/agentpools/out/status"))
        first = patches[0].data["status"]
        assert (first["queued"], first["inFlight"], first["recoveredTasks"]) == (3, 4, 3), \
            "requeued before the pool's first round read the queue"
        requeued = REGISTRY.get_sample_value(
            "agentpool_operator_tasks_requeued_total",
            {"namespace": NAMESPACE, "pool": "out", "cause": "pod_gone"},
        )
        assert requeued == 3
        pod_reads = [r.url.path for r in cluster.requests("GET", "")
                     if "/pods/" in str(r.url.path)]
        assert sorted(pod_reads) == [f"{PODS}/out-a", f"{PODS}/out-c"], \
            "only pods the watch does not know are read"
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_the_start_up_check_is_tried_again_when_the_api_fails(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    await cluster.create_pool(pool_manifest("rty", redis_url=redis_url, queue="rty"))
    queue = TaskQueue(redis, "rty")
    lost = await lease(queue, "rty-a", "i1", 2, lease_seconds=600)
    reads: list[str] = []
    get_pod = KubeApi.get_pod

    async def failing_once(self: KubeApi, namespace: str, name: str) -> dict[str, Any] | None:
        reads.append(name)
        if len(reads) == 1:
            raise ApiException(status=500, reason="Internal Server Error")
        return await get_pod(self, namespace, name)

    monkeypatch.setattr(KubeApi, "get_pod", failing_once)
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        await eventually(lambda: queued(redis, "rty"), within=5)
        assert await queued(redis, "rty") == set(lost)
        assert reads == ["rty-a", "rty-a"], "the next round read the pod again"
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_replacements_stay_within_the_budget(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    names = [f"bud-{i}" for i in range(3)]
    now = time.time()  # one reading: timestamps keep whole seconds, so two could tie
    for index, name in enumerate(names):
        await cluster.create(PODS, pod_manifest("bud", name, pod_status(
            ready=False, ready_since=now - 60 - index)))
    await start_pool(
        cluster, redis_url, "bud", pods=3,
        worker={"image": "w:1", "handler": "m:f", "drainSeconds": 1},
        recovery={"unreadyGraceSeconds": 5, "maxUnavailable": 1},
    )
    queue = TaskQueue(redis, "bud")

    def existing() -> set[str]:
        alive = set()
        for name in names:
            try:
                cluster.get("v1/pods", name)
                alive.add(name)
            except KeyError:
                pass
        return alive

    most_at_once = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 40
    while existing() and loop.time() < deadline:
        in_progress = set(await queue.drain_requests()) & existing()
        most_at_once = max(most_at_once, len(in_progress))
        await asyncio.sleep(0.02)

    assert not existing(), "every unready pod got replaced"
    assert most_at_once == 1
    await posted(cluster, "PodReplaced", 3)
    steps = [(e["reason"], e["message"].split()[2]) for e in cluster.events()
             if e["reason"] in ("DrainRequested", "PodReplaced")]
    assert steps == [(reason, pod) for pod in ("bud-2", "bud-1", "bud-0")
                     for reason in ("DrainRequested", "PodReplaced")], \
        "one at a time, the longest unready first"
    await eventually(lambda: cluster.pool("bud")["status"]["replacedPods"] == 3)


async def test_only_unready_pods_whose_worker_is_silent_are_replaced(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    """All three pods have been unready for a minute. hbt-out's worker heartbeats: its ready
    hook fails (a shared LLM API is down), a new pod would be as unready. hbt-new's worker
    container started a moment ago, after ten minutes of image pull and init containers, and
    its startup probe has not passed. Only hbt-dead, whose worker fell silent, is stuck."""
    now = time.time()
    queue = TaskQueue(redis, "hbt")
    await queue.heartbeat(WorkerInfo(pod="hbt-out", instance="i1", concurrency=1,
                                     started=now - 300), {}, 60)
    held = await lease(queue, "hbt-dead", "i1", 1)
    await fall_silent(queue, "hbt-dead", "i1")
    for name, status in (
        ("hbt-out", pod_status(ready=False, ready_since=now - 60)),
        ("hbt-new", pod_status(ready=False, ready_since=now - 600, started=now - 2,
                               startup_passed=False)),
        ("hbt-dead", pod_status(ready=False, ready_since=now - 60)),
    ):
        await cluster.create(PODS, pod_manifest("hbt", name, status))
    await start_pool(
        cluster, redis_url, "hbt", pods=3,
        worker={"image": "w:1", "handler": "m:f", "drainSeconds": 1},
        recovery={"unreadyGraceSeconds": 5, "maxUnavailable": 3},
    )

    await eventually(lambda: cluster.requests("DELETE", "/pods/hbt-dead"), within=4)
    await eventually(lambda: queued(redis, "hbt"), within=2)
    assert await queued(redis, "hbt") == set(held)
    deleted = time.time()
    await eventually(lambda: last_observed("hbt") > deleted + 2, within=4)  # two 1 s rounds
    assert [m.split()[2] for m in messages(cluster, "DrainRequested")] == ["hbt-dead"]
    assert [m.split()[2] for m in messages(cluster, "PodReplaced")] == ["hbt-dead"]
    assert not cluster.requests("DELETE", "/pods/hbt-out")
    assert not cluster.requests("DELETE", "/pods/hbt-new")
    assert set(await queue.drain_requests()) <= {"hbt-dead"}


async def test_replayed_pod_events_requeue_nothing_twice(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    await start_pool(cluster, redis_url, "dup", pods=2, poll_seconds=LONG_POLL)
    queue = TaskQueue(redis, "dup")
    await cluster.create(PODS, pod_manifest("dup", "dup-a"))
    held = await lease(queue, "dup-a", "i1", 3)
    evicted = pod_status(phase="Failed", terminated=True)
    evicted["reason"] = "Evicted"

    await patch_status(cluster, "dup-a", evicted)
    assert await posted(cluster, "TasksRequeued") == [
        "requeued 3 tasks of pod dup-a (pod evicted)"]
    assert await queued(redis, "dup") == set(held)
    retaken = {t.id for t in (await queue.claim("dup-b:i1", 3, 60)).tasks}
    assert retaken == set(held)

    # The pod's state delivered again (an unrelated change): only what an instance of the dead
    # pod still holds moves (here a task a late claim handed to it), not what moved before.
    late = await lease(queue, "dup-a", "i2", 1)
    await send(cluster, "PATCH", f"{PODS}/dup-a", {"metadata": {"labels": {"seen": "again"}}})
    assert (await posted(cluster, "TasksRequeued", 2))[1] == (
        "requeued 1 task of pod dup-a (pod evicted)")

    # Two operator replicas handling the same deletion at once, and a replay: nothing to move.
    body = cluster.get("v1/pods", "dup-a")
    replicas = [PoolRecovery(queue=queue), PoolRecovery(queue=queue)]
    await send(cluster, "DELETE", f"{PODS}/dup-a")
    kube = KubeApi.from_environment()
    taken = await asyncio.gather(*(recover_pod(r, "DELETED", body, kube) for r in replicas),
                                 recover_pod(replicas[0], "MODIFIED", body, kube))
    assert taken == [0, 0, 0]

    every = set(held) | set(late)
    waiting = await redis.zrange(key_prefix("dup") + "queued", 0, -1)
    running = await redis.zrange(key_prefix("dup") + "leases", 0, -1)
    assert len(waiting) + len(running) == len(every) == 4
    assert {m.decode() for m in waiting} | {m.decode() for m in running} == every
    assert await queue.held_by("dup-b:i1") == retaken
    assert await redis.hget(key_prefix("dup") + "stats", "requeued") == b"4"
    await eventually(lambda: cluster.pool("dup")["status"].get("recoveredTasks") == 4)
    assert len(messages(cluster, "TasksRequeued")) == 2


async def test_a_pod_taken_out_of_the_pool_by_its_label_keeps_its_tasks(
    cluster: Cluster, redis: aioredis.Redis
) -> None:
    """The watch selects pods by the pool's label: one whose label is taken off comes as
    deleted, with its labels as they were, while it runs on. Its worker keeps its tasks
    until the pod is really gone."""
    queue = TaskQueue(redis, "lbl")
    kube = KubeApi.from_environment()
    recovery = PoolRecovery(queue=queue)
    await cluster.create(PODS, pod_manifest("lbl", "lbl-a"))
    held = await lease(queue, "lbl-a", "i1", 2)
    as_it_was = cluster.get("v1/pods", "lbl-a")
    await send(cluster, "PATCH", f"{PODS}/lbl-a",
               {"metadata": {"labels": {"agentpool.dev/pool": None}}})

    assert await recover_pod(recovery, "DELETED", as_it_was, kube) == 0
    assert await queue.held_by("lbl-a:i1") == set(held)

    await send(cluster, "DELETE", f"{PODS}/lbl-a")
    assert await recover_pod(recovery, "DELETED", as_it_was, kube) == 2
    assert await queue.held_by("lbl-a:i1") == set()


async def test_expired_leases_of_a_silently_dead_worker_are_requeued(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    await start_pool(cluster, redis_url, "exp", pods=1)
    queue = TaskQueue(redis, "exp")
    await cluster.create(PODS, pod_manifest("exp", "exp-a"))
    held = await lease(queue, "exp-a", "i1", 2, lease_seconds=1)

    await eventually(lambda: queued(redis, "exp"), within=4)
    assert await queued(redis, "exp") == set(held)
    assert await posted(cluster, "LeasesExpired") == [
        "requeued 2 tasks of pod exp-a whose lease expired"
    ]
    await eventually(lambda: cluster.pool("exp")["status"].get("recoveredTasks") == 2)


async def test_deleted_pod_whose_worker_drains_keeps_its_tasks_until_it_stops(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    await start_pool(cluster, redis_url, "grc", pods=1)
    queue = TaskQueue(redis, "grc")
    await cluster.create(PODS, pod_manifest(
        "grc", "grc-a", finalizers=["example.com/hold"],
        deletionTimestamp=stamp(time.time() + 60),
    ))
    held = await lease(queue, "grc-a", "i1", 2)
    leased = time.time()
    await eventually(lambda: last_observed("grc") > leased + 2, within=4)  # two 1 s rounds
    assert await queued(redis, "grc") == set(), "a draining worker finishes its tasks"

    await patch_status(cluster, "grc-a", pod_status(terminated=True))

    await eventually(lambda: queued(redis, "grc"), within=2)
    assert await queued(redis, "grc") == set(held)
    await send(cluster, "PATCH", f"{PODS}/grc-a", {"metadata": {"finalizers": None}})


async def test_pods_on_a_node_that_is_gone_have_their_tasks_requeued(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis
) -> None:
    """Nodes are read by name (the chart grants `get` on nodes, not `list`): a pod whose node
    the API no longer has is dead, while a pod on a node that exists keeps its tasks."""
    await start_pool(cluster, redis_url, "nod", pods=2, poll_seconds=1)
    queue = TaskQueue(redis, "nod")
    await cluster.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                           "metadata": {"name": "n-here"}})
    for pod, node in (("nod-a", "n-here"), ("nod-b", "n-gone")):
        manifest = pod_manifest("nod", pod)
        manifest["spec"]["nodeName"] = node
        await cluster.create(PODS, manifest)
    kept = await lease(queue, "nod-a", "i1", 2)
    lost = await lease(queue, "nod-b", "i1", 3)

    await eventually(lambda: queued(redis, "nod"), within=4)
    assert await queued(redis, "nod") == set(lost)
    assert await queue.held_by("nod-a:i1") == set(kept)
    assert await posted(cluster, "TasksRequeued") == [
        "requeued 3 tasks of pod nod-b (node n-gone is gone)"]
    assert cluster.requests("GET", "/api/v1/nodes/n-gone")
    assert not cluster.requests("GET", "/api/v1/nodes"), "no list of every node"


async def test_a_node_found_missing_before_the_pod_list_is_read_again() -> None:
    """A node deleted and one of the same name joining: a "gone" read older than the pod
    list proves nothing about the pods in it."""
    class Nodes:
        def __init__(self) -> None:
            self.reads: list[str] = []
            self.existing = {"n1"}

        async def get_node(self, name: str) -> dict[str, Any] | None:
            self.reads.append(name)
            return {"metadata": {"name": name}} if name in self.existing else None

    kube = Nodes()
    on_n1, on_n2 = [PodView("a", node="n1")], [PodView("a", node="n1"), PodView("b", node="n2")]
    assert await gone_nodes(kube, on_n2, since=time.monotonic()) == {"n2"}
    assert await gone_nodes(kube, on_n1, since=time.monotonic()) == frozenset()
    assert kube.reads == ["n1", "n2"], "n1 from the cache"
    kube.existing.add("n2")
    listed = time.monotonic()
    assert await gone_nodes(kube, on_n2, since=listed) == frozenset(), "n2 read again"
    assert kube.reads == ["n1", "n2", "n2"]


async def test_a_pod_deletion_the_api_cannot_confirm_is_taken_as_said() -> None:
    """Reading the pod back fails (the API does not answer: the client raises its transport
    error, not an ApiException): the event's word stands, and its tasks are requeued."""
    class Unanswering:
        async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
            raise OSError("connection refused")

    body = pod_manifest("gone", "gone-a")
    body["metadata"]["uid"] = "u1"
    assert not await recovery_actions.still_running(Unanswering(), body)


class OwnerRequeueFailsSecond(TaskQueue):
    """A queue whose Redis goes away after the first instance's requeue of a round."""

    calls = 0

    async def requeue_owner(self, worker: str, reason: str = "worker lost") -> RequeueResult:
        self.calls += 1
        if self.calls == 2:
            raise RedisConnectionError("connection lost")
        return await super().requeue_owner(worker, reason)


async def test_tasks_requeued_before_redis_fails_part_way_are_still_counted(
    cluster: Cluster, redis: aioredis.Redis
) -> None:
    """A restarted container's earlier instances are requeued one by one; when Redis fails
    after the first, what it moved is back on the queue and counted for the status."""
    queue = OwnerRequeueFailsSecond(redis, "part")
    recovery = PoolRecovery(queue=queue)
    kube = KubeApi.from_environment()
    now = time.time()
    moved = await lease(queue, "part-a", "first", 2, started=now - 200)
    stays = await lease(queue, "part-a", "second", 1, started=now - 100)
    await lease(queue, "part-a", "now", 1, started=now - 9)
    await cluster.create(PODS, pod_manifest("part", "part-a",
                                            pod_status(restarts=2, started=now - 10)))

    with pytest.raises(RedisConnectionError):
        await recover_pod(recovery, "MODIFIED", cluster.get("v1/pods", "part-a"), kube)

    assert await queued(redis, "part") == set(moved)
    assert await queue.held_by("part-a:second") == set(stays)
    assert recovery.take_unreported() == 2
