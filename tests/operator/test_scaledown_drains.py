"""Scale-down rounds around pods that drain: a pool scaled to zero while a pod finishes its
runs, a draining pod deleted by hand, Redis unreachable while pods drain, a paused pool's
status, and replica counts written by someone else."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from operator_harness import NAMESPACE, Cluster, OperatorThread, eventually, pool_manifest
from prometheus_client import REGISTRY
from test_scaling_loop import cost_of, create_pods, pod_manifest, scaling, set_unready, start_worker

from agentpool.models import AgentPoolSpec
from agentpool.protocol import TaskQueue
from agentpool.scaling.policy import ScalingHistory
from agentpool.scaling.scaledown import DELETION_COST_ANNOTATION
from agentpool_operator import scaling_actions
from agentpool_operator.context import PoolState
from agentpool_operator.kube import KubeApi
from agentpool_operator.observation import PoolObservation
from agentpool_operator.scaling_plan import (
    HISTORY_ANNOTATION,
    RELEASED_ANNOTATION,
    REPLICAS_ANNOTATION,
)
from agentpool_operator.status import ConditionUpdate, DeploymentView, Problem, build_status


async def test_a_pool_scaled_to_zero_while_a_pod_finishes_its_runs_is_ready(
    cluster: Cluster, operator: OperatorThread, redis_url: str, redis: aioredis.Redis,
    queue_name: str,
) -> None:
    """Two runs need one pod: the pod with the oldest run drains, busy. The other's run ends
    and the pool goes to zero while the first still finishes its run; a few tasks arrive,
    below activationDepth. No pod is ready, yet none is wanted: Ready says ScaledToZero, and
    the health is not NotReady."""
    queue = TaskQueue(redis, queue_name)
    pods = [f"zz-5b8c7-{s}" for s in ("aaaaa", "bbbbb")]
    await queue.submit_many([{"n": n} for n in range(2)])
    tasks = {pod: await start_worker(queue, pod, busy=True) for pod in pods}
    await create_pods(cluster, "zz", pods)
    await cluster.create_pool(pool_manifest(
        "zz", redis_url=redis_url, queue=queue_name,
        scaling=scaling(minReplicas=2, maxReplicas=2, tasksPerReplica=4),
    ))
    await eventually(lambda: cluster.condition("zz", "Scaling")["reason"] == "FixedSize")
    await cluster.patch_pool("zz", {"spec": {"scaling": {
        "minReplicas": 0, "activationDepth": 5, "keepDrainedSeconds": 0}}})
    await eventually(lambda: cost_of(cluster, pods[0]) == "-1000")
    await set_unready(cluster, pods[0])
    done = tasks[pods[1]]
    assert done is not None and await queue.complete(done, "ok")
    await start_worker(queue, pods[1], busy=False)
    await eventually(lambda: cost_of(cluster, pods[1]) == "-2000")
    await set_unready(cluster, pods[1])
    await eventually(lambda: cluster.deployment("zz")["spec"]["replicas"] == 1)
    await queue.submit_many([{"n": n} for n in range(2)])
    await cluster.patch_deployment("zz", {"status": {"replicas": 2, "readyReplicas": 0}},
                                   subresource="status")

    status = await eventually(lambda: (s := cluster.pool("zz")["status"]).get(
        "readyReplicas") == 0 and s.get("queued") == 2 and s)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Scaling"]["reason"] == "Stable", conditions["Scaling"]
    assert "scaled to zero" in conditions["Scaling"]["message"]
    ready = conditions["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero"), ready
    assert "1 pod finishes its runs" in ready["message"]
    assert status["health"] == "Ready"
    assert cluster.deployment("zz")["spec"]["replicas"] == 1, "the busy pod keeps its replica"


def test_the_scaling_rounds_ready_stands_in_for_the_deployments_counts_not_for_a_problem(
) -> None:
    """One pod finishes its run and holds its replica (desired 1, ready 0) while the pool
    wants none: Ready as the scaling round words it. A problem still comes first."""
    at_zero = ConditionUpdate("Ready", "True", "ScaledToZero", "no worker wanted")
    scaling_ = ConditionUpdate("Scaling", "True", "Stable", "scaled to zero")

    def built(**kwargs: Any) -> dict[str, Any]:
        return build_status(queue="q", generation=1, deployment=DeploymentView(1, 1, 0),
                            figures=None, previous=None, now=datetime.now(UTC),
                            extra_conditions=[scaling_, at_zero], **kwargs)

    status = built()
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], status["health"]) == (
        "True", "ScaledToZero", "Ready")
    assert [c["type"] for c in status["conditions"]].count("Ready") == 1
    failing = built(queue_problem=Problem("RedisUnreachable", "connection refused"))
    ready = next(c for c in failing["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RedisUnreachable")


class Kube:
    """Records one round's writes (and reads no node: the pods have none)."""

    def __init__(self) -> None:
        self.pod_patches: list[tuple[str, dict[str, Any]]] = []
        self.deployment_patches: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    async def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.pod_patches.append((name, patch))

    async def patch_deployment(self, namespace: str, name: str,
                               patch: dict[str, Any]) -> dict[str, Any]:
        self.deployment_patches.append(patch)
        return {"metadata": {"name": name, **patch["metadata"]}, "spec": patch.get("spec", {})}

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.deleted.append(name)


Events = list[tuple[str, str, bool]]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Events:
    posted: Events = []

    def post(_: Any, reason: str, message: str, warning: bool = False) -> None:
        posted.append((reason, message, warning))

    monkeypatch.setattr(scaling_actions, "_post", post)
    return posted


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def observation(pool: str, queue: TaskQueue | None, deployment: dict[str, Any],
                state: PoolState, figures: Any = None, **spec: Any) -> PoolObservation:
    manifest = pool_manifest(pool, redis_url="redis://x:1/0", queue="q", **spec)
    return PoolObservation(
        namespace=NAMESPACE, name=pool, pool=manifest,
        spec=AgentPoolSpec.model_validate(manifest["spec"]), deployment=deployment,
        figures=figures, queue=queue, previous_status={}, now=datetime.now(UTC), state=state,
    )


def marked(pod: dict[str, Any], cost: str = "-1000") -> dict[str, Any]:
    pod["metadata"]["annotations"] = {DELETION_COST_ANNOTATION: cost}
    pod["status"]["conditions"][0]["status"] = "False"
    return pod


async def test_a_draining_pod_deleted_by_hand_takes_its_replica_with_it(
    redis: aioredis.Redis, queue_name: str, events: Events,
) -> None:
    """A busy draining pod is deleted by hand (it finishes its run while it terminates): its
    replica was never given back, so the ReplicaSet started a pod in its place. The round
    gives the replica back, so that the ReplicaSet removes that new pod, instead of draining
    and removing it later (a pod start and a ScaledDown nobody asked for)."""
    queue = TaskQueue(redis, queue_name)
    now = datetime.now(UTC)
    serving, deleted, replacement = "hd-5b8c7-aaaaa", "hd-5b8c7-bbbbb", "hd-5b8c7-ccccc"
    await queue.submit_many([{"n": n} for n in range(2)])
    await start_worker(queue, serving, busy=True)
    await start_worker(queue, deleted, busy=True)
    await queue.request_drain(deleted)
    gone = marked(pod_manifest("hd", deleted))
    gone["metadata"].update(deletionTimestamp=stamp(now + timedelta(seconds=590)),
                            deletionGracePeriodSeconds=600)
    new = pod_manifest("hd", replacement)
    new["metadata"]["creationTimestamp"] = stamp(now)
    new["status"] = {"phase": "Pending"}
    deployment = {"metadata": {"name": "hd", "annotations": {}}, "spec": {"replicas": 2}}
    kube = Kube()
    round_ = observation("hd", queue, deployment, PoolState(), await queue.figures(),
                         scaling=scaling(minReplicas=1, tasksPerReplica=4))

    await scaling_actions.scale(round_, [pod_manifest("hd", serving), gone, new],
                                cast(KubeApi, kube))

    assert [p["spec"]["replicas"] for p in kube.deployment_patches] == [1]
    assert kube.deployment_patches[0]["metadata"]["annotations"][RELEASED_ANNOTATION] == deleted
    marks = [name for name, patch in kube.pod_patches
             if DELETION_COST_ANNOTATION in (patch["metadata"].get("annotations") or {})]
    assert marks == [], "the pod started in its place is neither marked nor drained"
    assert set(await queue.drain_requests()) == {deleted}
    assert [reason for reason, *_ in events] == ["DrainedPodsRemoved"]
    assert deleted in events[0][1]


async def test_draining_fields_stay_while_the_queue_cannot_be_read(events: Events) -> None:
    """Redis unreachable: the drain requests (and so when the drains began) are unknown, so
    the round writes neither drainingReplicas nor drainingSince: the last ones stay, as a
    paused pool's do (drainingSince turned null beside a count that stayed)."""
    pods = [pod_manifest("ru", "ru-5b8c7-aaaaa"), marked(pod_manifest("ru", "ru-5b8c7-bbbbb"))]
    deployment = {"metadata": {"name": "ru", "annotations": {}}, "spec": {"replicas": 2}}
    result = await scaling_actions.scale(
        observation("ru", None, deployment, PoolState()), pods, cast(KubeApi, Kube()))
    assert "drainingReplicas" not in result.status_fields
    assert "drainingSince" not in result.status_fields


async def test_a_paused_pool_is_held_by_no_rate_limit(
    redis: aioredis.Redis, queue_name: str, events: Events,
) -> None:
    """A pool paused while a rate limit held it: the limit holds it no more (no decision is
    made), so rateLimitedBy (the -o wide column) is cleared, not left as it was."""
    queue = TaskQueue(redis, queue_name)
    deployment = {"metadata": {"name": "pz", "annotations": {}}, "spec": {"replicas": 2}}
    result = await scaling_actions.scale(
        observation("pz", queue, deployment, PoolState(), await queue.figures(), paused=True),
        [pod_manifest("pz", "pz-5b8c7-aaaaa")], cast(KubeApi, Kube()))
    assert "rateLimitedBy" in result.status_fields
    assert result.status_fields["rateLimitedBy"] is None


async def test_replicas_written_by_someone_else_are_reported_once(
    redis: aioredis.Redis, queue_name: str, events: Events,
) -> None:
    """kubectl scale set 4 where the operator had written 2: one Warning names kubectl and
    says the operator sets its own count; the next round, with that count written back,
    says nothing more."""
    queue = TaskQueue(redis, queue_name)
    pods = [pod_manifest("ho", f"ho-5b8c7-{s}") for s in ("aaaaa", "bbbbb", "ccccc", "ddddd")]
    for pod in pods:
        await start_worker(queue, pod["metadata"]["name"], busy=False)
    deployment: dict[str, Any] = {
        "metadata": {
            "name": "ho", "annotations": {REPLICAS_ANNOTATION: "2"},
            "managedFields": [
                {"manager": "OpenAPI-Generator", "operation": "Update",
                 "time": "2025-01-01T00:00:00Z",
                 "fieldsV1": {"f:metadata": {"f:annotations": {}}, "f:spec": {}}},
                {"manager": "kubectl", "operation": "Update", "subresource": "scale",
                 "time": "2025-01-01T00:05:00Z",
                 "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            ],
        },
        "spec": {"replicas": 4},
    }
    state = PoolState()
    kube = Kube()
    spec = {"scaling": scaling(minReplicas=1, maxReplicas=5, tasksPerReplica=4)}

    await scaling_actions.scale(
        observation("ho", queue, deployment, state, await queue.figures(), **spec), pods,
        cast(KubeApi, kube))

    warnings = [(reason, message) for reason, message, warning in events if warning]
    assert [reason for reason, _ in warnings] == ["ReplicasChangedOutside"]
    assert "changed to 4 by kubectl" in warnings[0][1] and "had set 2" in warnings[0][1]
    # a new history holds the scale-down for a window: the other writer's count stays so far
    assert "keeps 4 for now and sizes the pool by its queue from here" in warnings[0][1]
    assert "sets 4" not in warnings[0][1]
    assert len(kube.deployment_patches) == 1
    written = kube.deployment_patches[0]
    assert written["metadata"]["annotations"][REPLICAS_ANNOTATION] == str(
        written["spec"]["replicas"])

    events.clear()
    again = {**deployment, "metadata": {**deployment["metadata"],
                                        "annotations": written["metadata"]["annotations"]},
             "spec": written["spec"]}
    await scaling_actions.scale(
        observation("ho", queue, again, state, await queue.figures(), **spec), pods,
        cast(KubeApi, kube))
    assert not [reason for reason, _, warning in events if warning]


def merged(deployment: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The Deployment after a merge patch of its annotations (and count)."""
    annotations = {**deployment["metadata"].get("annotations", {}),
                   **patch["metadata"]["annotations"]}
    return {**deployment, "metadata": {**deployment["metadata"], "annotations": annotations},
            "spec": {**deployment["spec"], **patch.get("spec", {})}}


def recorded(deployment: dict[str, Any]) -> ScalingHistory:
    return ScalingHistory.from_json(json.loads(
        deployment["metadata"]["annotations"][HISTORY_ANNOTATION]))


def hand_scaled(pool: str, written: int | None, replicas: int,
                history: ScalingHistory) -> dict[str, Any]:
    """A Deployment the operator had scaled to `written` (None: an operator that kept no
    count), set to `replicas` by kubectl since."""
    annotations = {HISTORY_ANNOTATION: json.dumps(history.to_json())}
    if written is not None:
        annotations[REPLICAS_ANNOTATION] = str(written)
    return {
        "metadata": {"name": pool, "annotations": annotations, "managedFields": [
            {"manager": "kubectl", "operation": "Update", "subresource": "scale",
             "time": "2025-01-01T00:05:00Z", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
        "spec": {"replicas": replicas},
    }


async def test_a_count_set_by_hand_while_paused_is_the_users_once_resumed(
    redis: aioredis.Redis, queue_name: str, events: Events,
) -> None:
    """The operator had set 2; paused, kubectl scale set 3, which is what pausing is for: the
    paused round takes 3 as the count it keeps (annotations only), and neither the resumed
    pool nor an operator restarted then warns of another writer."""
    queue = TaskQueue(redis, queue_name)
    pods = [pod_manifest("pp", f"pp-5b8c7-{s}") for s in ("aaaaa", "bbbbb", "ccccc")]
    for pod in pods:
        await start_worker(queue, pod["metadata"]["name"], busy=False)
    deployment = hand_scaled("pp", 2, 3, ScalingHistory(since=1.0, replicas=2))
    spec = {"scaling": scaling(minReplicas=1, maxReplicas=5, tasksPerReplica=4)}
    state = PoolState()
    kube = Kube()

    await scaling_actions.scale(
        observation("pp", queue, deployment, state, await queue.figures(), paused=True, **spec),
        pods, cast(KubeApi, kube))
    [accepted] = kube.deployment_patches
    assert "spec" not in accepted, "the count is the user's: only the annotations follow it"
    deployment = merged(deployment, accepted)
    assert deployment["metadata"]["annotations"][REPLICAS_ANNOTATION] == "3"
    assert recorded(deployment).replicas == 3

    for resumed_state in (state, PoolState()):
        await scaling_actions.scale(
            observation("pp", queue, deployment, resumed_state, await queue.figures(), **spec),
            pods, cast(KubeApi, kube))
    assert not [reason for reason, _, warning in events if warning], events


async def test_the_first_round_after_a_pause_takes_the_count_it_finds_as_the_users(
    redis: aioredis.Redis, queue_name: str, events: Events,
) -> None:
    """kubectl scale and the resume came in before a paused round saw the count: the first
    round after the pause takes it as the user's too, and records it as the count it keeps."""
    queue = TaskQueue(redis, queue_name)
    pods = [pod_manifest("pq", f"pq-5b8c7-{s}") for s in ("aaaaa", "bbbbb", "ccccc")]
    for pod in pods:
        await start_worker(queue, pod["metadata"]["name"], busy=False)
    before = hand_scaled("pq", 2, 2, ScalingHistory(since=1.0, replicas=2))
    spec = {"scaling": scaling(minReplicas=1, maxReplicas=5, tasksPerReplica=4)}
    state = PoolState()
    kube = Kube()
    await scaling_actions.scale(
        observation("pq", queue, before, state, await queue.figures(), paused=True, **spec),
        pods[:2], cast(KubeApi, kube))
    assert kube.deployment_patches == []

    after = hand_scaled("pq", 2, 3, ScalingHistory(since=1.0, replicas=2))
    await scaling_actions.scale(
        observation("pq", queue, after, state, await queue.figures(), **spec),
        pods, cast(KubeApi, kube))
    assert not [reason for reason, _, warning in events if warning], events
    [written] = kube.deployment_patches
    assert written["metadata"]["annotations"][REPLICAS_ANNOTATION] == "3"
    assert written["spec"]["replicas"] == 3, "the scale-down waits for its window"


@pytest.mark.parametrize("operator_count", [2, None], ids=["counted", "older-operator"])
async def test_a_pool_set_to_zero_by_hand_while_paused_stays_asleep_once_resumed(
    redis: aioredis.Redis, queue_name: str, events: Events, operator_count: int | None,
) -> None:
    """An awake pool (its last decision 2) is paused and set to zero by hand; resumed with
    an empty queue it is asleep, not a pool whose pods left: no pod starts for a window. Its
    history records the zero, for an operator restarted after the resume."""
    queue = TaskQueue(redis, queue_name)
    deployment = hand_scaled("pz", operator_count, 0,
                             ScalingHistory(since=1.0, replicas=2, idle_since=1.0))
    spec = {"scaling": scaling(minReplicas=0, maxReplicas=5, tasksPerReplica=4)}
    state = PoolState()
    kube = Kube()
    await scaling_actions.scale(
        observation("pz", queue, deployment, state, await queue.figures(), paused=True, **spec),
        [], cast(KubeApi, kube))
    for patch in kube.deployment_patches:
        deployment = merged(deployment, patch)

    for resumed_state in (state, PoolState()):
        result = await scaling_actions.scale(
            observation("pz", queue, deployment, resumed_state, await queue.figures(), **spec),
            [], cast(KubeApi, kube))
        assert [reason for reason, *_ in events] == []
        scaling_ = next(c for c in result.conditions if c.type == "Scaling")
        assert (scaling_.reason, scaling_.message) == (
            "Stable", "scaled to zero; wakes when more than 0 tasks are queued")
        for patch in kube.deployment_patches:
            deployment = merged(deployment, patch)
    assert [p["spec"]["replicas"] for p in kube.deployment_patches if "spec" in p] == []
    assert recorded(deployment).replicas == 0


async def test_a_decision_of_zero_is_recorded_before_the_last_pods_replica_goes(
    redis: aioredis.Redis, queue_name: str, events: Events,
) -> None:
    """An idle one-pod pool decides zero: the round only releases the pod (its replica goes
    once it is unready), yet it records the zero. An operator restarted before the replica
    goes finds the pool asleep: it gives the replica back, and takes no pod back to work."""
    queue = TaskQueue(redis, queue_name)
    name = "rz-5b8c7-aaaaa"
    await start_worker(queue, name, busy=False)
    long_ago = time.time() - 3600
    deployment: dict[str, Any] = {
        "metadata": {"name": "rz", "annotations": {
            HISTORY_ANNOTATION: json.dumps(ScalingHistory(since=long_ago, replicas=1).to_json()),
            REPLICAS_ANNOTATION: "1"}},
        "spec": {"replicas": 1},
    }
    spec = {"scaling": scaling(minReplicas=0, maxReplicas=5, tasksPerReplica=4)}
    state = PoolState()
    state.scaling_history = ScalingHistory(since=long_ago, replicas=1, idle_since=long_ago)
    kube = Kube()
    await scaling_actions.scale(
        observation("rz", queue, deployment, state, await queue.figures(), **spec),
        [pod_manifest("rz", name)], cast(KubeApi, kube))
    [history_only] = kube.deployment_patches
    assert "spec" not in history_only, "the count stays while the pod is still ready"
    deployment = merged(deployment, history_only)
    assert recorded(deployment).replicas == 0
    [(_, mark)] = kube.pod_patches
    released = marked(pod_manifest("rz", name), mark["metadata"]["annotations"][
        DELETION_COST_ANNOTATION])

    events.clear()
    restarted = Kube()
    await scaling_actions.scale(
        observation("rz", queue, deployment, PoolState(), await queue.figures(), **spec),
        [released], cast(KubeApi, restarted))
    assert [reason for reason, *_ in events] == ["DrainedPodsRemoved"]
    assert [p["spec"]["replicas"] for p in restarted.deployment_patches] == [0]
    assert restarted.pod_patches == []


async def test_a_draining_pod_deleted_in_a_scale_up_round_leaves_its_replacement_serving(
    redis: aioredis.Redis, queue_name: str, events: Events,
) -> None:
    """Busy draining pod d is deleted by hand and the ReplicaSet started r in its place,
    while the backlog comes back for a third serving pod: r is that pod. The count stays at
    3, the Event says r stays, and no pod start is counted."""
    queue = TaskQueue(redis, queue_name)
    now = datetime.now(UTC)
    first, second, deleted, replacement = (f"su-5b8c7-{s}" for s in (
        "aaaaa", "bbbbb", "ddddd", "rrrrr"))
    await queue.submit_many([{"n": n} for n in range(4)])
    for pod in (deleted, first, second):
        await start_worker(queue, pod, busy=True)
    await queue.request_drain(deleted)
    gone = marked(pod_manifest("su", deleted))
    gone["metadata"].update(deletionTimestamp=stamp(now + timedelta(seconds=590)),
                            deletionGracePeriodSeconds=600)
    new = pod_manifest("su", replacement)
    new["metadata"]["creationTimestamp"] = stamp(now)
    new["status"] = {"phase": "Pending"}
    deployment = {"metadata": {"name": "su", "annotations": {}}, "spec": {"replicas": 3}}
    kube = Kube()
    starts = REGISTRY.get_sample_value("agentpool_operator_pod_starts_total",
                                       {"namespace": NAMESPACE, "pool": "su"}) or 0.0

    await scaling_actions.scale(
        observation("su", queue, deployment, PoolState(), await queue.figures(),
                    scaling=scaling(minReplicas=1, tasksPerReplica=1)),
        [pod_manifest("su", first), pod_manifest("su", second), gone, new],
        cast(KubeApi, kube))

    assert [p["spec"]["replicas"] for p in kube.deployment_patches] == [3]
    assert kube.deployment_patches[0]["metadata"]["annotations"][RELEASED_ANNOTATION] == deleted
    assert [reason for reason, *_ in events] == ["DrainedPodsRemoved", "ScaledUp"]
    removed = events[0][1]
    assert deleted in removed and "stay" in removed and "are removed" not in removed
    assert (REGISTRY.get_sample_value("agentpool_operator_pod_starts_total",
                                      {"namespace": NAMESPACE, "pool": "su"}) or 0.0) == starts
