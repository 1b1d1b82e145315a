"""Recovery applied to one pool: requeue the tasks of dead pods, drain and replace stuck ones.

Three paths requeue:
- once when a pool's loop starts (`recover_gone_pods`: operator start, restart, a new leader),
  before its first round: the tasks of worker instances whose pod went away while no operator
  ran, which no pod event will ever report;
- every round of the pool's loop (`recover`), over the full pod list, the worker instances
  Redis knows and the drains requested; it also reaps expired leases (the fallback for deaths
  nobody saw: the loop is woken when the earliest lease runs out, so this costs the lease, not
  the lease plus a poll) and reports the counters in the status;
- every event of one of the pool's pods (`recover_pod`), for speed: a pod deleted, failed or
  restarted has its tasks requeued as soon as Kubernetes reports it. A single pod is not the
  full picture, so this path only requeues; draining and deleting wait for the next round.
The last two apply `recovery.decide_recovery`.

Requeueing is idempotent in the protocol (only tasks still leased move, each at most once), so
overlapping paths, a replayed event, or two operators racing never duplicate a queue entry;
the counters add up what the protocol says it actually moved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any, Protocol

import kopf
from kubernetes.client.exceptions import ApiException

from agentpool.protocol import RequeueResult, TaskQueue, worker_id
from agentpool.redis_errors import REDIS_FAILURES

from . import metrics
from .context import PoolRecovery
from .kube import KubeApi, api_error_message
from .node_reads import NodeReader, read_nodes
from .observation import ActionResult, PoolObservation
from .recovery import (
    CONTAINER_RESTARTED,
    DeletePod,
    InstanceView,
    PodView,
    RecoveryInputs,
    RecoveryPolicy,
    RequestDrain,
    Requeue,
    decide_recovery,
    gone_pod_requeues,
    instance_view,
    judged_instances,
    pod_is_dead,
    pod_view,
)

logger = logging.getLogger(__name__)

STUCK_POD_DRAIN_SECONDS = 60
"""At most this long between asking a stuck (unready) pod to drain and deleting it. Its runs
lose nothing by the deletion: SIGTERM gives them drainSeconds (by default as long as a run may
last) while the ReplicaSet already starts the pod that replaces it."""


def policy_of(observation: PoolObservation) -> RecoveryPolicy:
    spec = observation.spec
    return RecoveryPolicy(
        unready_grace_seconds=spec.recovery.unready_grace_seconds,
        drain_seconds=min(spec.worker.stop_seconds, STUCK_POD_DRAIN_SECONDS),
        max_unavailable=spec.recovery.max_unavailable,
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def requeue_message(action: Requeue, result: RequeueResult) -> str:
    whose = f"pod {action.pod}"
    if action.reason == CONTAINER_RESTARTED and action.instances is not None:
        whose += f" ({plural(len(action.instances), 'earlier instance')})"
    return f"requeued {outcome_text(result)} of {whose} ({action.reason})"


def outcome_text(result: RequeueResult) -> str:
    parts = [plural(result.requeued, "task")]
    if result.dead_lettered:
        parts.append(f"{result.dead_lettered} dead-lettered after their last attempt")
    if result.cancelled:
        parts.append(f"{result.cancelled} cancelled as requested")
    return ", ".join(parts)


def post(pool: Any, reason: str, message: str, *, pod: str) -> None:
    """Log naming the namespace, pool and pod, and post an Event about the pool (kopf.Body or
    a plain dict; None: log only)."""
    namespace, name = pool_identity(pool)
    logger.info("%s/%s: %s: %s", namespace, name, reason, message,
                extra={"namespace": namespace, "pool": name, "pod": pod, "reason": reason})
    if pool is not None:
        kopf.info(pool, reason=reason, message=message)


async def requeue_parts(queue: TaskQueue, action: Requeue) -> AsyncIterator[RequeueResult]:
    """What each protocol call of `action` moved: one call for a pod, one per instance."""
    if action.instances is None:
        yield await queue.requeue_pod(action.pod, reason=action.reason,
                                      keep_drain=action.keep_drain)
        return
    for instance in action.instances:
        yield await queue.requeue_owner(worker_id(action.pod, instance), reason=action.reason)


async def requeue_and_report(
    queue: TaskQueue, pool: Mapping[str, Any] | None, action: Requeue, recovery: PoolRecovery
) -> int:
    """Requeue, post an Event when anything moved; the number of tasks taken back.

    What moved is counted into `recovery.unreported` (the status's next `recoveredTasks`) and
    reported even when a later call of the action fails: those tasks are back on the queue.
    """
    result = RequeueResult()
    try:
        async for part in requeue_parts(queue, action):
            result += part
    finally:
        recovery.unreported += result.total
        if result.total:
            post(pool, "TasksRequeued", requeue_message(action, result), pod=action.pod)
            namespace, name = pool_identity(pool)
            if name:
                metrics.record_requeue_result(namespace, name, action.reason, result)
    return result.total


def by_pod(by_worker: Mapping[str, RequeueResult]) -> dict[str, RequeueResult]:
    """Per-instance results added up per pod (a worker id is `<pod>:<instance>`)."""
    pods: dict[str, RequeueResult] = {}
    for worker, result in by_worker.items():
        pod = worker.rpartition(":")[0] or worker
        pods[pod] = pods.get(pod, RequeueResult()) + result
    return pods


def pool_identity(pool: Mapping[str, Any] | None) -> tuple[str, str]:
    meta = (pool or {}).get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


# -- pod events ---------------------------------------------------------------------------


async def recover_pod(recovery: PoolRecovery, event_type: str | None,
                      pod: Mapping[str, Any], kube: PodReader) -> int:
    """Requeue at once what a deleted, failed or restarted pod's workers held.

    Returns the number of tasks taken back (0 for a replay: the protocol moves each task once).
    Before the pool's first round (no queue known yet) this does nothing: that round sees it.
    The watch selects pods by the pool's label, so a pod whose label was taken off (to debug
    it outside the pool, say) comes as deleted while it runs on: it is read back first, and
    one still there keeps its tasks (a round judges its workers by their heartbeats).
    """
    queue = recovery.queue
    if queue is None:
        return 0
    view = pod_view(pod)
    if event_type == "DELETED":
        if await still_running(kube, pod):
            return 0
        view = dataclasses.replace(view, deleting=True, container_started_at=None)
    now = time.time()
    instances: list[InstanceView] = []
    if pod_is_dead(view, frozenset()) is None and view.restarts and view.container_started_at:
        instances = [instance_view(i) for i in await queue.instances(pod=view.name)]
    inputs = RecoveryInputs(pods=[view], instances=instances, pods_complete=False)
    taken = 0
    for action in decide_recovery(inputs, recovery.policy, now):
        if isinstance(action, Requeue):
            taken += await requeue_and_report(queue, recovery.pool, action, recovery)
    return taken


async def still_running(kube: PodReader, pod: Mapping[str, Any]) -> bool:
    """Whether `pod` (as a watch's deletion brought it) exists still, the same pod and not
    being deleted. When the API cannot say, it is taken as gone, as the event says."""
    meta = pod.get("metadata") or {}
    try:
        now = await kube.get_pod(meta.get("namespace", ""), meta.get("name", ""))
    except Exception:  # an error answer, or none (the client's transport errors are its own)
        return False
    now_meta = (now or {}).get("metadata") or {}
    return (now is not None and now_meta.get("uid") == meta.get("uid")
            and not now_meta.get("deletionTimestamp"))


class PodReader(Protocol):
    async def get_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...


# -- the start of a pool's loop -----------------------------------------------------------


async def recover_gone_pods(
    queue: TaskQueue, kube: PodReader, pool: Mapping[str, Any], known_pods: Collection[str],
    recovery: PoolRecovery,
) -> int:
    """Requeue what worker instances of pods that no longer exist hold; the tasks taken back.

    `known_pods` are the pool's pods from the watch. An instance whose pod is among them is
    left to the regular round; the other pods are read from the API after the instances were
    read from Redis (the order `gone_pod_requeues` needs), so a pod created since, or one
    outside the pool's watch, keeps its tasks. When every pod is known, this costs a Redis
    read and no API request.
    """
    namespace, name = pool_identity(pool)
    instances = [instance_view(i) for i in await queue.instances()]
    suspects = gone_pod_requeues(instances, known_pods, name)
    if not suspects:
        return 0
    found = await asyncio.gather(*(kube.get_pod(namespace, a.pod) for a in suspects))
    existing = {*known_pods, *(a.pod for a, pod in zip(suspects, found, strict=True) if pod)}
    taken = 0
    for action in gone_pod_requeues(instances, existing, name):
        taken += await requeue_and_report(queue, pool, action, recovery)
    return taken


# -- the pool's round ---------------------------------------------------------------------


async def gone_nodes(kube: NodeReader, pods: Sequence[PodView], since: float) -> frozenset[str]:
    """The nodes of these pods that the API says no longer exist, as read after `since`
    (when the pod list was taken: a node may be deleted and a new one take its name)."""
    nodes = await read_nodes(kube, {pod.node for pod in pods if pod.node},
                             missing_read_after=since)
    return frozenset(name for name, node in nodes.items()
                     if node.body is None and node.error is None)


def desired_replicas(observation: PoolObservation, pods: Sequence[PodView]) -> int:
    spec = (observation.deployment or {}).get("spec") or {}
    replicas = spec.get("replicas")
    return int(replicas) if replicas is not None else len(pods)


async def recover(
    observation: PoolObservation, pods: Sequence[dict[str, Any]], kube: KubeApi
) -> ActionResult:
    """One round: decide over the pool's pods and workers, apply, reap expired leases.

    A paused pool keeps its pods (no drain, no delete), but the tasks of dead workers are
    still requeued: the queue's at-least-once guarantee depends on it.
    """
    state = observation.state
    recovery = state.recovery if state is not None else PoolRecovery()
    recovery.queue, recovery.pool = observation.queue, observation.pool
    recovery.policy = policy_of(observation)
    queue = observation.queue
    if queue is None:
        return ActionResult()

    recovered = replaced = 0
    shrank = False
    try:
        reaped = await queue.reap_expired()
        shrank = reaped.expired_waiting > 0
        if reaped.total:
            recovered += reaped.total
            metrics.record_requeue_result(
                observation.namespace, observation.name, "lease_expired", reaped
            )
            for pod, result in by_pod(reaped.by_worker).items():
                post(observation.pool, "LeasesExpired",
                     f"requeued {outcome_text(result)} of pod {pod} whose lease expired", pod=pod)
        views = [pod_view(pod) for pod in pods]
        listed = time.monotonic()
        now = observation.now.timestamp()
        instances = await queue.instances()
        drains = await queue.drain_requests()
        inputs = RecoveryInputs(
            pods=views,
            instances=judged_instances(instances, {view.name for view in views}, now),
            drains=drains,
            gone_nodes=await gone_nodes(kube, views, listed),
            desired_replicas=desired_replicas(observation, views),
            pods_complete=True,
        )
        for action in decide_recovery(inputs, recovery.policy, now):
            if isinstance(action, Requeue):
                await requeue_and_report(queue, observation.pool, action, recovery)
            elif observation.spec.paused:
                continue
            elif isinstance(action, RequestDrain):
                await queue.request_drain(action.pod)
                metrics.record_drains(observation.namespace, observation.name, "recovery")
                post(observation.pool, "DrainRequested",
                     f"asked pod {action.pod} to drain: {action.reason}", pod=action.pod)
            elif isinstance(action, DeletePod) and await kube.delete_pod(
                observation.namespace, action.pod
            ):
                replaced += 1
                metrics.record_pods_replaced(observation.namespace, observation.name)
                post(observation.pool, "PodReplaced",
                     f"deleted pod {action.pod} to have it replaced: {action.reason}",
                     pod=action.pod)
        if state is not None:
            recovery.wake_at_expiry(await queue.next_lease_expiry(), state.wake,
                                    observation.spec.scaling.poll_seconds)
    except (*REDIS_FAILURES, ApiException) as error:
        detail = api_error_message(error) if isinstance(error, ApiException) else repr(error)
        logger.warning("recovery of %s/%s stopped early: %s",
                       observation.namespace, observation.name, detail)
    recovered += recovery.take_unreported()
    return ActionResult(status_fields=counters(observation.previous_status, recovered, replaced),
                        queue_shrank=shrank)


def counters(previous: Mapping[str, Any], recovered: int, replaced: int) -> dict[str, int]:
    """recoveredTasks and replacedPods, carried over and increased; absent until first used."""
    fields: dict[str, int] = {}
    for key, count in (("recoveredTasks", recovered), ("replacedPods", replaced)):
        if count or key in previous:
            fields[key] = int(previous.get(key) or 0) + count
    return fields
