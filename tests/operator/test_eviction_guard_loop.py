"""Evictions that wait for runs, against kmock and a real redis-server: each pool gets its
PodDisruptionBudget, busy pods carry the label it protects, and the pods of a cordoned node
leave once their runs end while new pods replace them.

kmock enforces no budget (only a real API server refuses an eviction, see the e2e suite); here
the operator's side is checked: the budget it writes, the labels, drains and replicas.
"""

from __future__ import annotations

import time
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
from test_scaling_loop import (
    cost_of,
    create_pod_on,
    create_pods,
    drains_are,
    scaling,
    set_unready,
    start_worker,
)

from agentpool.protocol import TaskQueue
from agentpool_operator import disruption, disruption_actions, node_reads
from agentpool_operator.deployment import POOL_LABEL
from agentpool_operator.disruption import BUSY_LABEL
from agentpool_operator.scaling_plan import RELEASED_ANNOTATION
from agentpool_operator.settings import OperatorSettings

PODS = "v1/pods"
BUDGETS = "policy/v1/poddisruptionbudgets"


@pytest.fixture(autouse=True)
def quick_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disruption, "IDLE_BEFORE_UNGUARDED_SECONDS", 0.5)
    monkeypatch.setattr(node_reads, "NODE_CACHE_SECONDS", 0.2)


def guarded(cluster: Cluster, pod: str) -> bool:
    labels = cluster.get(PODS, pod)["metadata"].get("labels") or {}
    return labels.get(BUSY_LABEL) == "true"


def unguarded_or_gone(cluster: Cluster, pod: str) -> bool:
    """kmock's pods stay once their replica is given back (no ReplicaSet), so the operator
    deletes them itself, as it does a drained pod the ReplicaSet kept."""
    try:
        return not guarded(cluster, pod)
    except KeyError:
        return True


def budget_gone(cluster: Cluster, name: str) -> bool:
    try:
        cluster.get(BUDGETS, name)
    except KeyError:
        return True
    return False


async def create_node(cluster: Cluster, name: str, *, cordoned: bool) -> None:
    spec: dict[str, Any] = {"unschedulable": True} if cordoned else {}
    await cluster.create("/api/v1/nodes", {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec,
    })


async def test_busy_pods_carry_the_label_the_pools_budget_protects(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    pods = ["gu-6f7d8-aaaaa", "gu-6f7d8-bbbbb"]
    await queue.submit_many([{"n": n} for n in range(2)])
    task = await start_worker(queue, pods[0], busy=True)
    assert task is not None
    await start_worker(queue, pods[1], busy=False)
    await create_pods(cluster, "gu", pods)
    await cluster.create_pool(pool_manifest(
        "gu", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=2, maxReplicas=2),
    ))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        budget = await eventually(lambda: cluster.get(BUDGETS, "gu"))
        assert budget["spec"] == {
            "maxUnavailable": 0,
            "selector": {"matchLabels": {POOL_LABEL: "gu", BUSY_LABEL: "true"}},
        }
        assert budget["metadata"]["ownerReferences"][0]["kind"] == "AgentPool"
        await eventually(lambda: guarded(cluster, pods[0]))
        assert not guarded(cluster, pods[1])

        # The second pod takes a run and the first one's run ends: the labels follow.
        second = (await queue.claim(f"{pods[1]}:i1", 1, 120.0)).tasks[0]
        assert await queue.complete(task, "ok")
        await eventually(lambda: guarded(cluster, pods[1]) and not guarded(cluster, pods[0]))
        assert cluster.condition("gu", "Degraded")["status"] == "False"

        # A budget deleted by hand comes back at the next look; turned off, it goes for good
        # and so do the labels.
        await cluster.patch_pool("gu", {"spec": {"worker": {"protectBusyPods": False}}})
        await eventually(lambda: budget_gone(cluster, "gu"))
        await eventually(lambda: not guarded(cluster, pods[1]))
        assert await queue.complete(second, "ok")
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_a_paused_pool_keeps_its_busy_pods_guarded(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    pod = "pa-7d8e9-aaaaa"
    await queue.submit({"n": 1})
    task = await start_worker(queue, pod, busy=True)
    assert task is not None
    await create_pods(cluster, "pa", [pod])
    await cluster.create_pool(pool_manifest(
        "pa", redis_url=redis_url, queue=queue_name, paused=True))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        await eventually(lambda: guarded(cluster, pod))
        await eventually(lambda: cluster.condition("pa", "Scaling")["reason"] == "Paused")
        assert await queue.complete(task, "ok")
        await eventually(lambda: not guarded(cluster, pod))
        assert cost_of(cluster, pod) is None
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_a_budget_the_pool_does_not_own_makes_it_degraded(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str, queue_name: str,
) -> None:
    await cluster.create(f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "mine", "namespace": NAMESPACE},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "mine"}}},
    })
    await cluster.create_pool(pool_manifest("mine", redis_url=redis_url, queue=queue_name))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        degraded = await eventually(
            lambda: (c := cluster.condition("mine", "Degraded"))["status"] == "True" and c)
        assert degraded["reason"] == "DisruptionBudgetError"
        assert "not controlled by this pool" in degraded["message"]
        assert cluster.get(BUDGETS, "mine")["spec"]["minAvailable"] == 1, "left alone"
        # Gone (the collector removing a deleted pool's budget, say): the pool's own follows
        # at once, not at the next five-minute check.
        await cluster.delete(f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets/mine")
        ours = await eventually(lambda: _budget_or_none(cluster, "mine"), within=5)
        assert ours["metadata"]["ownerReferences"][0]["name"] == "mine"
        await eventually(lambda: cluster.condition("mine", "Degraded")["status"] == "False")
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


def _budget_or_none(cluster: Cluster, name: str) -> dict[str, Any] | None:
    try:
        budget = cluster.get(BUDGETS, name)
    except KeyError:
        return None
    return budget if budget.get("metadata", {}).get("ownerReferences") else None


async def test_pods_of_a_cordoned_node_leave_once_their_runs_end(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    busy, idle, elsewhere = "co-5c6d7-aaaaa", "co-5c6d7-bbbbb", "co-5c6d7-ccccc"
    await create_node(cluster, "node-a", cordoned=True)
    await create_node(cluster, "node-b", cordoned=False)
    await queue.submit({"n": 1})
    task = await start_worker(queue, busy, busy=True)
    assert task is not None
    for pod in (idle, elsewhere):
        await start_worker(queue, pod, busy=False)
    for pod, node in ((busy, "node-a"), (idle, "node-a"), (elsewhere, "node-b")):
        await create_pod_on(cluster, "co", pod, node)
    await cluster.create_pool(pool_manifest(
        "co", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=3, maxReplicas=3),
    ))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        # Both pods of node-a drain (the idle one released at once); two new pods are asked
        # for, so the pool keeps three serving replicas; both stay guarded meanwhile.
        await eventually(lambda: cost_of(cluster, busy) == "-1000")
        await eventually(lambda: cost_of(cluster, idle) == "-2000")
        await eventually(lambda: drains_are(queue, {busy, idle}))
        await eventually(lambda: cluster.deployment("co")["spec"]["replicas"] == 5)
        await eventually(lambda: guarded(cluster, busy) and guarded(cluster, idle))
        event = (await eventually(lambda: cluster.events("NodeDraining")))[0]
        assert busy in event["message"] and idle in event["message"]
        assert "1 runs in flight finish first" in event["message"]
        await eventually(lambda: (s := cluster.pool("co")["status"]).get(
            "drainingReplicas") == 2 and s.get("drainingSince"))

        # The idle one gives its replica back once unready; the ReplicaSet then removes it
        # (no eviction needed: until then the label keeps the drain from racing us).
        await set_unready(cluster, idle)
        await eventually(lambda: cluster.deployment("co")["spec"]["replicas"] == 4)
        annotations = cluster.deployment("co")["metadata"]["annotations"]
        assert annotations[RELEASED_ANNOTATION] == idle
        await eventually(lambda: unguarded_or_gone(cluster, idle))

        # The busy one keeps its run, its replica and its label until the run ends.
        info = await queue.get(task.id)
        assert info is not None and (info.state, info.owner) == ("running", f"{busy}:i1")
        assert guarded(cluster, busy) and cost_of(cluster, busy) == "-1000"
        assert await queue.complete(task, "ok")
        await eventually(lambda: cost_of(cluster, busy) == "-2000")
        await set_unready(cluster, busy)
        await eventually(lambda: cluster.deployment("co")["spec"]["replicas"] == 3)
        await eventually(lambda: unguarded_or_gone(cluster, busy))
        assert cost_of(cluster, elsewhere) is None and not guarded(cluster, elsewhere)
        assert cluster.events("DrainWithdrawn") == []
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_a_replica_given_back_as_a_new_pod_is_asked_for_is_written_all_the_same(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str,
    redis: aioredis.Redis, queue_name: str,
) -> None:
    """A pod of a cordoned node gives its replica back in the round the load asks for one
    more pod: the count stays as it was, and the Deployment must still name the pod given
    back (else every round plans the same, posts the same Events, and the pool stays short)."""
    queue = TaskQueue(redis, queue_name)
    serving, leaving, new = "lv-5c6d7-aaaaa", "lv-5c6d7-bbbbb", "lv-5c6d7-ccccc"
    await create_node(cluster, "node-a", cordoned=True)
    await create_node(cluster, "node-b", cordoned=False)
    for pod, node in ((serving, "node-b"), (leaving, "node-a")):
        await start_worker(queue, pod, busy=False)
        await create_pod_on(cluster, "lv", pod, node)
    await cluster.create_pool(pool_manifest(
        "lv", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=2, maxReplicas=5, tasksPerReplica=1),
    ))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        await eventually(lambda: cost_of(cluster, leaving) == "-2000")
        await eventually(lambda: cluster.deployment("lv")["spec"]["replicas"] == 3)
        await start_worker(queue, new, busy=False)
        await create_pod_on(cluster, "lv", new, "node-b")
        created = time.time()
        await eventually(lambda: last_observed("lv") > created + 0.1)

        # Between two rounds (1 s apart): the load rises to three and the leaving pod turns
        # unready, so the next round gives its replica back and asks for a new pod at once.
        await queue.submit_many([{"n": n} for n in range(3)])
        await set_unready(cluster, leaving)

        await eventually(lambda: (cluster.deployment("lv")["metadata"].get("annotations")
                                  or {}).get(RELEASED_ANNOTATION) == leaving)
        assert cluster.deployment("lv")["spec"]["replicas"] == 3
        await eventually(lambda: cluster.requests("DELETE", f"/pods/{leaving}"))
        assert len(cluster.events("DrainedPodsRemoved")) == 1
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


class Nodes:
    """Answers node reads from a dict, counting them; a name mapped to an int is refused with
    that status."""

    def __init__(self, nodes: dict[str, Any]) -> None:
        self.nodes = nodes
        self.reads: list[str] = []

    async def get_node(self, name: str) -> dict[str, Any] | None:
        self.reads.append(name)
        found = self.nodes.get(name)
        if isinstance(found, int):
            raise ApiException(status=found, reason="Forbidden")
        return found


def on(*nodes: str) -> list[dict[str, Any]]:
    return [{"metadata": {"name": f"p-{n}"}, "spec": {"nodeName": n}} for n in nodes]


async def test_nodes_are_read_once_per_cache_period_and_a_refusal_is_a_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node_reads, "NODE_CACHE_SECONDS", 60.0)
    nodes = Nodes({"a": {"spec": {"unschedulable": True}}, "b": {"spec": {}}, "c": 403})
    going, problem = await disruption_actions.going_nodes_of(nodes, on("a", "b", "a"))
    assert (going, problem, sorted(nodes.reads)) == ({"a"}, None, ["a", "b"])
    going, problem = await disruption_actions.going_nodes_of(nodes, on("a", "b", "c"))
    assert going == {"a"} and sorted(nodes.reads) == ["a", "b", "c"], "a and b from the cache"
    assert problem is not None and problem.reason == "NodesUnreadable"
    assert "cannot read node c (403 Forbidden)" in problem.message
