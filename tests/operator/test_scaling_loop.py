"""The scaling loop against kmock and a real redis-server: the operator sizes the Deployment
from the queue, removes idle pods first and keeps a busy pod's replica until its runs end.

kmock runs no controllers, so the tests create the worker Pods themselves and register their
workers in Redis; the ReplicaSet never removes the marked pods, which lets a test watch the
marks stay put round after round.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from kubernetes.client.exceptions import ApiException
from operator_harness import (
    NAMESPACE,
    Cluster,
    OperatorThread,
    eventually,
    pool_manifest,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from agentpool.models import AgentPoolSpec
from agentpool.protocol import ClaimedTask, TaskQueue, WorkerInfo
from agentpool.redis_server import free_port
from agentpool.scaling.scaledown import DELETION_COST_ANNOTATION
from agentpool_operator import scaling_actions
from agentpool_operator.context import PoolState
from agentpool_operator.deployment import pool_labels
from agentpool_operator.kube import KubeApi
from agentpool_operator.observation import PoolObservation
from agentpool_operator.scaling_actions import work_by_pod
from agentpool_operator.scaling_plan import HISTORY_ANNOTATION, RELEASED_ANNOTATION
from agentpool_operator.settings import OperatorSettings

PODS = "v1/pods"
LEASE = 120.0


def scaling(**fields: Any) -> dict[str, Any]:
    return {"minReplicas": 1, "maxReplicas": 5, "pollSeconds": 1,
            "scaleDownCooldownSeconds": 1, **fields}


def pod_manifest(pool: str, name: str) -> dict[str, Any]:
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": pool_labels(pool)},
        "spec": {"containers": [{"name": "worker", "image": "registry.example/w:1"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": started}],
            "containerStatuses": [{
                "name": "worker", "ready": True, "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            }],
        },
    }


async def create_pods(cluster: Cluster, pool: str, names: list[str]) -> None:
    for name in names:
        await cluster.create(f"/api/v1/namespaces/{NAMESPACE}/pods", pod_manifest(pool, name))


async def create_pod_on(cluster: Cluster, pool: str, name: str, node: str) -> None:
    """A pool's pod scheduled on `node`."""
    body = pod_manifest(pool, name)
    body["spec"]["nodeName"] = node
    await cluster.create(f"/api/v1/namespaces/{NAMESPACE}/pods", body)


async def set_unready(cluster: Cluster, pod: str, *, ready: bool = False) -> None:
    """What the kubelet does once a draining worker fails /readyz (or, `ready`, passes it
    again)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    await cluster._send("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/status", {
        "status": {"conditions": [
            {"type": "Ready", "status": str(ready), "lastTransitionTime": now},
        ]},
    })


def cost_of(cluster: Cluster, pod: str) -> str | None:
    annotations = cluster.get(PODS, pod)["metadata"].get("annotations") or {}
    return annotations.get(DELETION_COST_ANNOTATION)


def deployment_writes(cluster: Cluster, name: str) -> list[Any]:
    return cluster.requests("PATCH", f"/deployments/{name}")


async def one_more_round(cluster: Cluster, pool: str, ready: int) -> None:
    """Change the Deployment's status (which wakes the pool) and wait until a round saw it."""
    await cluster.patch_deployment(pool, {"status": {"replicas": 5, "readyReplicas": ready}},
                                   subresource="status")
    await eventually(lambda: cluster.pool(pool)["status"]["readyReplicas"] == ready)


async def drains_are(queue: TaskQueue, pods: set[str]) -> bool:
    return set(await queue.drain_requests()) == pods


async def start_worker(queue: TaskQueue, pod: str, *, busy: bool) -> ClaimedTask | None:
    worker = WorkerInfo(pod=pod, instance="i1", concurrency=1)
    if not busy:
        await queue.heartbeat(worker, {}, LEASE)
        return None
    task = (await queue.claim(worker.worker_id, 1, LEASE)).tasks[0]
    worker.runs_since = (task.claimed_ms,)
    await queue.heartbeat(worker, {task.id: task.token}, LEASE)
    return task


async def test_scale_down_drains_and_marks_only_idle_pods(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    pods = [f"nu-7c9d5-{suffix}" for suffix in ("a1b2c", "d3e4f", "g5h6i", "j7k8l", "m9n0p")]
    busy = [pods[0], pods[2], pods[4]]
    idle = [pods[1], pods[3]]
    gone = "nu-7c9d5-zzzzz"
    await queue.submit_many([{"n": n} for n in range(3)])
    tasks = {pod: await start_worker(queue, pod, busy=pod in busy) for pod in pods}
    await redis.hset(queue.prefix + "drain", gone, 1)
    await create_pods(cluster, "nu", pods)
    await cluster.create_pool(pool_manifest(
        "nu", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=5, tasksPerReplica=1),
    ))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        await eventually(lambda: cluster.condition("nu", "Scaling")["reason"] == "FixedSize")
        assert cluster.deployment("nu")["spec"]["replicas"] == 5
        assert deployment_writes(cluster, "nu") == []

        await cluster.patch_pool("nu", {"spec": {"scaling": {"minReplicas": 1}}})

        # The chosen pods are marked released (they hold no run) and asked to drain; the
        # replica count waits until they stop being Ready, so the ReplicaSet cannot prefer
        # some other, unready, busy pod.
        await eventually(lambda: all(cost_of(cluster, pod) == "-2000" for pod in idle))
        await eventually(lambda: drains_are(queue, set(idle)))
        assert cluster.deployment("nu")["spec"]["replicas"] == 5
        for pod in idle:
            await set_unready(cluster, pod)

        await eventually(lambda: cluster.deployment("nu")["spec"]["replicas"] == 3)
        given_back = cluster.deployment("nu")["metadata"]["annotations"][RELEASED_ANNOTATION]
        assert sorted(given_back.split(",")) == sorted(idle)
        assert {pod: cost_of(cluster, pod) for pod in pods} == {
            pod: "-2000" if pod in idle else None for pod in pods
        }
        for pod in busy:
            task = tasks[pod]
            assert task is not None
            assert await queue.held_by(f"{pod}:i1") == {task.id}
            info = await queue.get(task.id)
            assert info is not None
            assert (info.state, info.owner, info.attempts) == ("running", f"{pod}:i1", 1)
        figures = await queue.figures()
        assert (figures.queued, figures.in_flight) == (0, 3)

        status = await eventually(
            lambda: (s := cluster.pool("nu")["status"]).get("desiredReplicas") == 3 and s
        )
        assert "scaling 5 → 3" in status["lastScaleReason"]
        assert status["lastScaleTime"]
        scaled = (await eventually(lambda: cluster.events("ScaledDown")))[0]
        assert all(pod in scaled["message"] for pod in idle)
        draining = (await eventually(lambda: cluster.events("DrainingPods")))[0]
        assert "all idle" in draining["message"]
        await eventually(lambda: cluster.events("DrainedPodsRemoved"))
        assert len(deployment_writes(cluster, "nu")) == 1

        # Later rounds, and a restarted operator, keep the marks and choose no other pod.
        await one_more_round(cluster, "nu", ready=4)
        await operator.stop()
        operator = OperatorThread(operator_settings.model_copy(update={"port": free_port()}))
        await operator.start()
        await one_more_round(cluster, "nu", ready=3)
        assert set(await queue.drain_requests()) == set(idle)
        assert [pod for pod in pods if cost_of(cluster, pod)] == idle
        assert len(deployment_writes(cluster, "nu")) == 1
        assert cluster.events("DrainWithdrawn") == []
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_a_busy_pod_chosen_keeps_its_replica_until_its_runs_end_and_a_burst_takes_it_back(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    pods = [f"rho-5b8c7-{suffix}" for suffix in ("aaaaa", "bbbbb", "ccccc")]
    await queue.submit_many([{"n": n} for n in range(3)])
    tasks = {}
    for pod in pods:  # the first pod's run is the oldest
        task = await start_worker(queue, pod, busy=True)
        assert task is not None
        tasks[pod] = task
    await create_pods(cluster, "rho", pods)
    await cluster.create_pool(pool_manifest(
        "rho", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=3, maxReplicas=3, tasksPerReplica=3),
    ))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        await eventually(lambda: cluster.condition("rho", "Scaling")["reason"] == "FixedSize")
        await cluster.patch_pool("rho", {"spec": {"scaling": {"minReplicas": 1}}})

        # Three runs need one pod of three tasks: the two pods with the oldest runs drain,
        # and keep their replicas while their runs go on, round after round.
        draining = pods[:2]
        await eventually(lambda: all(cost_of(cluster, pod) == "-1000" for pod in draining))
        await eventually(lambda: drains_are(queue, set(draining)))
        for pod in draining:
            await set_unready(cluster, pod)
        await eventually(lambda: (s := cluster.pool("rho")["status"]).get(
            "drainingReplicas") == 2 and s.get("drainingSince"))
        event = (await eventually(lambda: cluster.events("DrainingPods")))[0]
        assert "2 runs in flight finish first" in event["message"]
        for ready in (2, 1, 2):
            await one_more_round(cluster, "rho", ready=ready)
        assert cluster.deployment("rho")["spec"]["replicas"] == 3
        assert deployment_writes(cluster, "rho") == []
        for pod, task in tasks.items():
            info = await queue.get(task.id)
            assert info is not None and (info.state, info.owner) == ("running", f"{pod}:i1")

        # The first run ends: that pod is released and its replica goes.
        assert await queue.complete(tasks[pods[0]], "ok")
        await eventually(lambda: cost_of(cluster, pods[0]) == "-2000")
        await eventually(lambda: cluster.deployment("rho")["spec"]["replicas"] == 2)
        assert cost_of(cluster, pods[1]) == "-1000"
        await eventually(lambda: cluster.events("DrainedPodsRemoved"))

        # A burst: the pod still draining goes back to work instead of a new pod starting.
        await queue.submit_many([{"n": n} for n in range(3)])
        await eventually(lambda: cost_of(cluster, pods[1]) is None)
        await eventually(lambda: drains_are(queue, {pods[0]}))
        await eventually(lambda: cluster.events("DrainWithdrawn"))
        await eventually(lambda: cluster.pool("rho")["status"].get("drainingReplicas") == 0)
        assert cluster.deployment("rho")["spec"]["replicas"] == 2
        assert len(deployment_writes(cluster, "rho")) == 1
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_a_drained_idle_pod_keeps_its_replica_while_recent_need_calls_for_it(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, queue_name: str,
) -> None:
    """The load falls: the pod whose run ended drains but keeps its replica (the need of the
    last keepDrainedSeconds was two pods); the load returns: it is taken back, no pod starts."""
    queue = TaskQueue(redis, queue_name)
    pods = [f"phi-4d2e1-{suffix}" for suffix in ("aaaaa", "bbbbb")]
    await queue.submit_many([{"n": n} for n in range(2)])
    tasks = {}
    for pod in pods:
        task = await start_worker(queue, pod, busy=True)
        assert task is not None
        tasks[pod] = task
    await create_pods(cluster, "phi", pods)
    await cluster.create_pool(pool_manifest(
        "phi", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=2, maxReplicas=2, tasksPerReplica=1),
    ))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        await eventually(lambda: cluster.condition("phi", "Scaling")["reason"] == "FixedSize")
        await cluster.patch_pool("phi", {"spec": {"scaling": {
            "minReplicas": 1, "maxReplicas": 3, "keepDrainedSeconds": 3600}}})
        await eventually(lambda: cluster.condition("phi", "Scaling")["reason"] == "Stable")

        idle = pods[1]
        assert await queue.complete(tasks[idle], "ok")
        await start_worker(queue, idle, busy=False)
        await eventually(lambda: cost_of(cluster, idle) == "-1000")
        await eventually(lambda: drains_are(queue, {idle}))
        await set_unready(cluster, idle)
        await eventually(lambda: cluster.pool("phi")["status"].get("drainingReplicas") == 1)
        for ready in (1, 2, 1):
            await one_more_round(cluster, "phi", ready=ready)
        assert cost_of(cluster, idle) == "-1000"
        assert cluster.deployment("phi")["spec"]["replicas"] == 2
        assert deployment_writes(cluster, "phi") == []
        assert cluster.events("DrainedPodsRemoved") == []

        await queue.submit({"n": 2})
        await eventually(lambda: cost_of(cluster, idle) is None)
        await eventually(lambda: drains_are(queue, set()))
        await eventually(lambda: cluster.events("DrainWithdrawn"))
        await eventually(lambda: cluster.pool("phi")["status"].get("drainingReplicas") == 0)
        assert cluster.deployment("phi")["spec"]["replicas"] == 2
        assert deployment_writes(cluster, "phi") == []
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_a_drained_pod_the_replicaset_kept_is_deleted(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    """Its replica was given back, but the ReplicaSet removed another pod: the drained one
    serves nothing, so it is deleted and the ReplicaSet replaces it."""
    queue = TaskQueue(redis, queue_name)
    await queue.submit({"n": 0})
    serving, drained = "tau-6f7d8-aaaaa", "tau-6f7d8-bbbbb"
    await start_worker(queue, serving, busy=True)
    await cluster.create_pool(pool_manifest(
        "tau", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=2, maxReplicas=2), paused=True,
    ))
    await eventually(lambda: cluster.deployment("tau"))
    await create_pods(cluster, "tau", [serving, drained])
    # The replica given back first: a paused pool's round that saw the pod marked while its
    # replica still counted would withdraw the drain (plan_paused), as it should.
    await cluster.patch_deployment("tau", {
        "metadata": {"annotations": {RELEASED_ANNOTATION: drained}},
        "spec": {"replicas": 2},
    })
    await cluster._send("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{drained}", {
        "metadata": {"annotations": {DELETION_COST_ANNOTATION: "-2000"}},
    })
    await cluster.patch_pool("tau", {"spec": {"paused": False}})

    await eventually(lambda: cluster.requests("DELETE", f"/pods/{drained}"))
    event = (await eventually(lambda: cluster.events("DrainedPodDeleted")))[0]
    assert drained in event["message"]
    assert not cluster.requests("DELETE", f"/pods/{serving}")
    assert cluster.deployment("tau")["spec"]["replicas"] == 2


async def test_backlog_scales_up_once_and_then_holds(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    await TaskQueue(redis, queue_name).submit_many([{"n": n} for n in range(9)])
    await cluster.create_pool(pool_manifest(
        "xi", redis_url=redis_url, queue=queue_name,
        scaling=scaling(maxReplicas=4, tasksPerReplica=2),
    ))

    await eventually(lambda: cluster.deployment("xi")["spec"]["replicas"] == 4)
    status = await eventually(
        lambda: (s := cluster.pool("xi")["status"]).get("desiredReplicas") == 4 and s
    )
    assert status["lastScaleReason"] == (
        "backlog 9 > 1 replica × 2 tasks, capped at maxReplicas 4: scaling 1 → 4"
    )
    event = (await eventually(lambda: cluster.events("ScaledUp")))[0]
    assert event["type"] == "Normal"
    assert event["involvedObject"]["name"] == "xi"
    assert "scaling 1 → 4" in event["message"]
    history = json.loads(cluster.deployment("xi")["metadata"]["annotations"][HISTORY_ANNOTATION])
    assert history["lastScaleUp"] is not None

    for ready in (1, 2, 3):
        await one_more_round(cluster, "xi", ready=ready)
    assert cluster.condition("xi", "Scaling")["reason"] == "AtMaximum"
    assert len(deployment_writes(cluster, "xi")) == 1
    assert len(cluster.events("ScaledUp")) == 1


async def test_a_refused_scale_makes_the_pool_degraded(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A quota or a webhook refusing the replica change: the pool cannot grow, which its
    health says at a glance, not only the Scaling condition."""
    real_patch = KubeApi.patch_deployment

    async def refuse_replicas(self: KubeApi, namespace: str, name: str,
                              patch: Mapping[str, Any]) -> Any:
        if "replicas" in (patch.get("spec") or {}):
            raise ApiException(status=403, reason="Forbidden: exceeded quota")
        return await real_patch(self, namespace, name, patch)

    monkeypatch.setattr(KubeApi, "patch_deployment", refuse_replicas)
    await TaskQueue(redis, queue_name).submit_many([{"n": n} for n in range(6)])
    await cluster.create_pool(pool_manifest(
        "rf", redis_url=redis_url, queue=queue_name, scaling=scaling(tasksPerReplica=2),
    ))

    degraded = await eventually(lambda: (c := cluster.condition("rf", "Degraded"))["status"]
                                == "True" and c)
    assert degraded["reason"] == "ScaleFailed"
    assert degraded["message"] == (
        "cannot set the Deployment's replicas to 3: 403 Forbidden: exceeded quota")
    assert cluster.condition("rf", "Scaling")["reason"] == "ScaleFailed"
    assert cluster.pool("rf")["status"]["health"] == "Degraded"
    assert cluster.deployment("rf")["spec"]["replicas"] == 1


async def test_paused_pool_is_not_scaled(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    await TaskQueue(redis, queue_name).submit_many([{"n": n} for n in range(8)])
    await cluster.create_pool(pool_manifest(
        "omicron", redis_url=redis_url, queue=queue_name, scaling=scaling(), paused=True,
    ))

    paused = await eventually(lambda: cluster.condition("omicron", "Scaling"))
    assert (paused["status"], paused["reason"]) == ("False", "Paused")
    await one_more_round(cluster, "omicron", ready=1)
    assert cluster.deployment("omicron")["spec"]["replicas"] == 1
    assert deployment_writes(cluster, "omicron") == []

    await cluster.patch_pool("omicron", {"spec": {"paused": False}})
    await eventually(lambda: cluster.deployment("omicron")["spec"]["replicas"] == 2)


async def test_a_paused_pool_takes_back_the_pods_its_scale_down_drains(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, queue_name: str,
) -> None:
    """Paused while a scale-down drains, the pool puts the pod that scale-down chose back to
    work (drain request cleared, deletion cost gone) and keeps its size; the pod leaving with
    its cordoned node keeps draining, and the pod whose replica was given back is not taken
    back. Resumed, the pool chooses afresh."""
    queue = TaskQueue(redis, queue_name)
    given, chosen, serving, leaving = (
        f"ka-6b7c8-{suffix}" for suffix in ("aaaaa", "bbbbb", "ccccc", "ddddd"))
    for node, cordoned in (("node-a", False), ("node-b", True)):
        await cluster.create("/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
            "spec": {"unschedulable": True} if cordoned else {},
        })
    await queue.submit_many([{"n": n} for n in range(4)])
    tasks = {}
    for pod in (given, chosen, serving, leaving):  # the first pod's run is the oldest
        task = await start_worker(queue, pod, busy=True)
        assert task is not None
        tasks[pod] = task
        await create_pod_on(cluster, "ka", pod, "node-b" if pod == leaving else "node-a")
    await cluster.create_pool(pool_manifest(
        "ka", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=4, maxReplicas=4, tasksPerReplica=3),
    ))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        # The pod of node-b leaves (a new pod is asked for in its place); then the scale-down
        # drains the two pods with the oldest runs, and the first one's replica goes once its
        # run ended.
        await eventually(lambda: cost_of(cluster, leaving) == "-1000")
        await eventually(lambda: cluster.condition("ka", "Scaling")["reason"] == "FixedSize")
        await cluster.patch_pool("ka", {"spec": {"scaling": {"minReplicas": 1}}})
        await eventually(lambda: cost_of(cluster, given) == cost_of(cluster, chosen) == "-1000")
        await eventually(lambda: drains_are(queue, {given, chosen, leaving}))
        for pod in (given, chosen):
            await set_unready(cluster, pod)
        assert await queue.complete(tasks[given], "ok")
        await eventually(lambda: cluster.deployment("ka")["metadata"]["annotations"].get(
            RELEASED_ANNOTATION) == given)
        replicas = cluster.deployment("ka")["spec"]["replicas"]
        writes = len(deployment_writes(cluster, "ka"))
        assert cost_of(cluster, given) == "-2000"

        await cluster.patch_pool("ka", {"spec": {"paused": True}})
        await eventually(lambda: cost_of(cluster, chosen) is None)
        await eventually(lambda: drains_are(queue, {given, leaving}))
        event = (await eventually(lambda: cluster.events("DrainWithdrawn")))[0]
        assert chosen in event["message"] and "paused" in event["message"]
        await set_unready(cluster, chosen, ready=True)  # its worker claims again
        await eventually(lambda: cluster.pool("ka")["status"].get("drainingReplicas") == 1)
        for ready in (2, 3):
            await one_more_round(cluster, "ka", ready=ready)
        assert cluster.condition("ka", "Scaling")["reason"] == "Paused"
        assert (cost_of(cluster, given), cost_of(cluster, leaving)) == ("-2000", "-1000")
        assert await drains_are(queue, {given, leaving})
        deployment = cluster.deployment("ka")
        assert deployment["spec"]["replicas"] == replicas
        assert deployment["metadata"]["annotations"][RELEASED_ANNOTATION] == given
        assert len(deployment_writes(cluster, "ka")) == writes

        # Resumed: the two serving pods hold two runs, one pod's worth, so the scale-down
        # drains one of them again (the older run's); the others stay as they were.
        await cluster.patch_pool("ka", {"spec": {"paused": False}})
        await eventually(lambda: cost_of(cluster, chosen) == "-1000")
        await eventually(lambda: drains_are(queue, {given, chosen, leaving}))
        assert cost_of(cluster, serving) is None
        assert (cost_of(cluster, given), cost_of(cluster, leaving)) == ("-2000", "-1000")
        assert cluster.deployment("ka")["metadata"]["annotations"][RELEASED_ANNOTATION] == given
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


class PodWrites:
    """Records the pod patches of one round (and reads no node: the pods have none)."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []

    async def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.patches.append((name, patch))


async def test_a_redis_failure_while_paused_leaves_the_drains_as_they_were(
    redis: aioredis.Redis, queue_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis fails as a paused round takes back the second of two chosen pods: the first is
    back at work, the second still drains and keeps its mark; none is left half-way."""
    queue = TaskQueue(redis, queue_name)
    first, second = "ra-1a2b3-aaaaa", "ra-1a2b3-bbbbb"
    pods = []
    for name in (first, second):
        await queue.request_drain(name)
        pod = pod_manifest("ra", name)
        pod["metadata"]["annotations"] = {DELETION_COST_ANNOTATION: "-1000"}
        pods.append(pod)
    clear_drain = queue.clear_drain

    async def failing_after_one(name: str) -> None:
        if name != first:
            raise RedisConnectionError("Connection reset by peer")
        await clear_drain(name)

    monkeypatch.setattr(queue, "clear_drain", failing_after_one)
    events: list[tuple[str, str]] = []
    monkeypatch.setattr(scaling_actions, "_post",
                        lambda _, reason, message: events.append((reason, message)))
    manifest = pool_manifest("ra", redis_url="redis://x:1/0", queue=queue_name, paused=True)
    observation = PoolObservation(
        namespace=NAMESPACE, name="ra", pool=manifest,
        spec=AgentPoolSpec.model_validate(manifest["spec"]),
        deployment={"metadata": {"name": "ra"}, "spec": {"replicas": 2}},
        figures=await queue.figures(), queue=queue, previous_status={},
        now=datetime.now(UTC), state=PoolState(),
    )
    kube = PodWrites()

    result = await scaling_actions.scale(observation, pods, cast(KubeApi, kube))

    assert [c.reason for c in result.conditions] == ["Paused"]
    assert kube.patches == [
        (first, {"metadata": {"annotations": {DELETION_COST_ANNOTATION: None}}})]
    assert set(await queue.drain_requests()) == {second}
    assert [reason for reason, _ in events] == ["DrainWithdrawn"]
    assert first in events[0][1] and second not in events[0][1]
    assert result.status_fields["drainingReplicas"] == 1


async def test_an_unpaused_pool_restarts_its_window_and_idle_time(
    cluster: Cluster, operator: OperatorThread, redis_url: str, queue_name: str,
) -> None:
    """No decision saw the queue while the pool was paused: as after an operator restart,
    the first round after the pause restarts the stabilisation window, and the idle time
    that lets a pool go to zero counts from then, so a size set by hand during the pause is
    not drained at once."""
    await cluster.create_pool(pool_manifest(
        "upsilon", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=0, maxReplicas=3, scaleDownCooldownSeconds=2),
    ))
    await eventually(lambda: cluster.deployment("upsilon"))
    # a scale to zero proves the pool's history and its idle time older than a window
    # (the ScaledDown condition lives one round; the event it posts stays)
    await cluster.patch_deployment("upsilon", {"spec": {"replicas": 2}})
    scaled = (await eventually(lambda: cluster.events("ScaledDown"), within=20))[0]
    assert "2 → 0" in scaled["message"], scaled["message"]
    assert cluster.deployment("upsilon")["spec"]["replicas"] == 0

    async def unpaused_at(replicas: int) -> dict[str, Any]:
        """The Scaling condition of the first round after a pause that set `replicas`."""
        await cluster.patch_pool("upsilon", {"spec": {"paused": True}})
        await eventually(lambda: cluster.condition("upsilon", "Scaling")["reason"] == "Paused")
        await cluster.patch_deployment("upsilon", {"spec": {"replicas": replicas}})
        await cluster.patch_pool("upsilon", {"spec": {"paused": False}})
        return await eventually(lambda: (c := cluster.condition("upsilon", "Scaling"))[
            "reason"] != "Paused" and c)

    held = await unpaused_at(3)
    assert held["reason"] == "Stabilizing", held["message"]
    assert cluster.deployment("upsilon")["spec"]["replicas"] == 3
    await eventually(lambda: cluster.deployment("upsilon")["spec"]["replicas"] == 0)

    # above maxReplicas no window holds the scale-down; the idle time still counts from the
    # pause's end, so the pool keeps one replica for a window before it goes to zero
    # (read from the Deployment: the round after may already have written its own condition)
    await unpaused_at(5)
    await eventually(lambda: cluster.deployment("upsilon")["spec"]["replicas"] == 1)
    await eventually(lambda: cluster.deployment("upsilon")["spec"]["replicas"] == 0)


async def test_unreachable_redis_holds_the_size(
    cluster: Cluster, operator: OperatorThread, redis_url: str,
) -> None:
    await cluster.create_secret("pi-redis", {"url": f"redis://127.0.0.1:{free_port()}/0"})
    await cluster.create_pool(pool_manifest(
        "pi", secret="pi-redis", scaling=scaling(scaleDownCooldownSeconds=0),
    ))
    await eventually(lambda: cluster.deployment("pi"))
    await cluster.patch_deployment("pi", {"spec": {"replicas": 3}})

    held = await eventually(lambda: (c := cluster.condition("pi", "Scaling"))["message"]
                            == "queue figures unavailable: holding 3 replicas" and c)
    assert (held["status"], held["reason"]) == ("False", "QueueUnavailable")
    await one_more_round(cluster, "pi", ready=2)
    assert cluster.deployment("pi")["spec"]["replicas"] == 3
    assert len(deployment_writes(cluster, "pi")) == 1, "only the hand-scale by the test"
    assert cluster.pool("pi")["status"]["desiredReplicas"] == 3

    # With the queue readable again, the idle queue scales the pool down to its minimum.
    await cluster.create(f"/api/v1/namespaces/{NAMESPACE}/secrets", {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pi-redis-2", "namespace": NAMESPACE},
        "stringData": {"url": redis_url},
    })
    await cluster.patch_pool("pi", {"spec": {"redis": {"urlSecretRef": {"name": "pi-redis-2"}}}})
    await eventually(lambda: cluster.deployment("pi")["spec"]["replicas"] == 1)


async def test_the_runs_of_a_terminating_pod_start_no_new_pod(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, queue_name: str,
) -> None:
    """A rollout's old pod finishes its runs while it terminates (drainSeconds defaults to
    taskTimeoutSeconds): its runs occupy no slot of the pool, so they must not make it grow."""
    queue = TaskQueue(redis, queue_name)
    new, old = "ro-8d9e0-aaaaa", "ro-7c8d9-bbbbb"
    await queue.submit_many([{"n": n} for n in range(2)])
    worker = WorkerInfo(pod=old, instance="i1", concurrency=2)
    tasks = (await queue.claim(worker.worker_id, 2, LEASE)).tasks
    worker.runs_since = tuple(t.claimed_ms for t in tasks)
    await queue.heartbeat(worker, {t.id: t.token for t in tasks}, LEASE)
    await start_worker(queue, new, busy=False)
    await create_pods(cluster, "ro", [new])
    terminating = pod_manifest("ro", old)
    # As the API server writes a deletion: the time the grace period ends, and the grace
    # (a finalizer keeps kmock from removing the pod at once).
    asked = datetime.now(UTC).replace(microsecond=0)
    terminating["metadata"].update({
        "deletionTimestamp": (asked + timedelta(seconds=615)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "deletionGracePeriodSeconds": 615, "finalizers": ["example.com/hold"],
    })
    await cluster.create(f"/api/v1/namespaces/{NAMESPACE}/pods", terminating)
    await cluster.create_pool(pool_manifest(
        "ro", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=1, maxReplicas=4, tasksPerReplica=1),
    ))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        await eventually(lambda: cluster.pool("ro")["status"]["inFlight"] == 2)
        for ready in (1, 2):
            await one_more_round(cluster, "ro", ready)
        status = cluster.pool("ro")["status"]
        assert status["desiredReplicas"] == 1
        assert cluster.deployment("ro")["spec"]["replicas"] == 1
        # The status counts it among the pods that finish their runs before they go.
        assert status["drainingReplicas"] == 1
        assert status["drainingSince"] == asked.strftime("%Y-%m-%dT%H:%M:%SZ")

        # Work that does need a slot still scales the pool.
        await queue.submit_many([{"n": n} for n in range(2)])
        await eventually(lambda: cluster.deployment("ro")["spec"]["replicas"] == 2)
        for task in tasks:
            assert await queue.complete(task, "ok")
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_run_start_times_come_only_from_instances_holding_tasks(
    redis: aioredis.Redis, queue_name: str,
) -> None:
    """A worker container that restarted leaves its old instance registered, its leases
    reaped, with the runs of its last heartbeat: their ages would grow as if they still ran.
    Only instances holding tasks give start times, at most as many as they hold."""
    queue = TaskQueue(redis, queue_name)
    pod = "nu-7c9d5-a1b2c"
    claimed_ms = int((await redis.time())[0]) * 1000
    dead = WorkerInfo(pod=pod, instance="old", concurrency=4,
                      runs_since=tuple(claimed_ms - s * 1000 for s in (1230, 1225, 1210)))
    await queue.heartbeat(dead, {}, LEASE)
    await queue.submit({"n": 0})
    live = WorkerInfo(pod=pod, instance="new", concurrency=4)
    task = (await queue.claim(live.worker_id, 1, LEASE)).tasks[0]
    # its last heartbeat still lists a run that ended since, older than the one it holds
    live.runs_since = (task.claimed_ms - 20_000, task.claimed_ms)
    await queue.heartbeat(live, {task.id: task.token}, LEASE)

    work = await work_by_pod(queue)
    assert list(work) == [pod] and work[pod].in_flight == 1
    # on the reader's clock: Redis's moved by the offset read with them
    assert work[pod].runs_since == (pytest.approx(task.claimed_ms / 1000, abs=1.0),)


async def test_a_pool_at_zero_starts_no_pod_for_tasks_past_their_expiry(
    cluster: Cluster, operator: OperatorThread, redis_url: str, queue_name: str,
    redis: aioredis.Redis,
) -> None:
    """They would only be cancelled by the pod's first claim: the reaper ends them, and the
    round's scaling and status read the queue again after it."""
    queue = TaskQueue(redis, queue_name)
    stale = await queue.submit_many([{"n": n} for n in range(3)], expires=0.05)
    info = await queue.get(stale[-1])
    assert info is not None and info.expires_ms is not None
    expiry = info.expires_ms
    await eventually(lambda: datetime.now(UTC).timestamp() * 1000 > expiry + 5)
    await cluster.create_pool(pool_manifest(
        "phi", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=0, maxReplicas=3),
    ))
    await eventually(lambda: "Scaling" in {c["type"] for c in (
        cluster.pool("phi").get("status") or {}).get("conditions", [])})
    states = {i.state for i in await queue.get_many(stale)}
    assert states == {"cancelled"}
    assert cluster.pool("phi")["status"]["queued"] == 0, "the first status counts no ended task"
    assert cluster.deployment("phi")["spec"]["replicas"] == 0
    assert cluster.events("ScaledUp") == []
