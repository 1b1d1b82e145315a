"""Scaling applied to one pool: size the Deployment, drain idle pods first on scale-down.

Each round of the pool's loop calls `scale` with what it observed. It runs `scaling.decide`
on the queue figures (None: the policy's missing-data fallback holds the size), the
Deployment's `spec.replicas`, the pool's history and the clock, and writes the Deployment only
when the decision changes the replica count.

Scale-down is task-aware. The pods that leave are *marked*: they carry
``controller.kubernetes.io/pod-deletion-cost: -1000``, so the ReplicaSet removes exactly them,
and a drain request in Redis, so their workers claim nothing new and finish what they hold
(a busy pod, chosen only when no idle one is left, then gets drainSeconds after its SIGTERM).
Marks are the state, kept in the cluster and in Redis, never only in memory: every round
wants `marks_wanted` pods marked, keeps the marks already placed (a retried round or a
restarted operator chooses no more pods), chooses more only when a scale-down needs them and
withdraws marks that are no longer needed (the ReplicaSet took another pod, or the pool
scaled up again before it acted). Drain requests of pods that no longer exist are cleared.

The policy's history lives in the pool's `PoolState`; each scale also records it in an
annotation of the Deployment, in the same write as the replica count, so a restarted operator
keeps its scale times. A restored history restarts its stabilisation window: the
recommendations the operator did not see while it was away might have forbidden a scale-down.

The `Scaling` condition says whether the autoscaler is in control and what it last did:
True with ScaledUp, ScaledDown, Stable, Stabilizing (a scale-down waits for the
stabilisation window or the cooldown), CoolingDown (a scale-up waits for its cooldown) or
AtMaximum; False with Paused, FixedSize or QueueUnavailable; Unknown with DeploymentMissing.
Its messages avoid figures that move every poll, so holding does not rewrite the status.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import kopf
import redis.exceptions
from kubernetes.client.exceptions import ApiException

from agentpool.protocol import TaskQueue
from agentpool.scaling.policy import (
    TIMES,
    Decision,
    QueueLoad,
    ScalingHistory,
    ScalingPolicy,
    decide,
)
from agentpool.scaling.scaledown import (
    CHOSEN_COST,
    DELETION_COST_ANNOTATION,
    choose_pods_to_remove,
    interrupted_if_removed,
    pod_loads,
)

from . import metrics
from .context import PoolState
from .kube import KubeApi, api_error_message
from .observation import ActionResult, PoolObservation
from .status import ConditionUpdate, rfc3339, sanitize

HISTORY_ANNOTATION = "agentpool.dev/scaling-history"
STALE_DRAIN_SECONDS = 30.0
"""A drain request of a pod that no longer exists is cleared once it is this old."""
DRAIN_SWEEP_SECONDS = 30.0
"""Least time between two looks for stale drain requests of one pool."""

REDIS_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)

log = logging.getLogger(__name__)


# -- pure decisions --------------------------------------------------------------------------


@dataclass(frozen=True)
class PodSummary:
    """What scale-down needs to know about one pod of the pool."""

    name: str
    ready: bool = True
    gone: bool = False
    """Being deleted, or finished (Succeeded/Failed): not a live replica any more."""
    marked: bool = False
    """Carries the deletion cost this module sets on the pods it chose."""

    @classmethod
    def from_body(cls, pod: Mapping[str, Any]) -> PodSummary:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        gone = bool(meta.get("deletionTimestamp")) or status.get("phase") in (
            "Succeeded", "Failed",
        )
        annotations = meta.get("annotations") or {}
        return cls(
            name=str(meta.get("name", "")),
            ready=ready,
            gone=gone,
            marked=annotations.get(DELETION_COST_ANNOTATION) == CHOSEN_COST,
        )


@dataclass(frozen=True)
class RemovalPlan:
    keep: tuple[str, ...] = ()
    """Marked before, still leaving."""
    mark: tuple[str, ...] = ()
    """Chosen now."""
    unmark: tuple[str, ...] = ()
    """Marked before, no longer leaving: back to work."""

    @property
    def leaving(self) -> tuple[str, ...]:
        return self.keep + self.mark


def marks_wanted(pods: Sequence[PodSummary], current: int, target: int) -> int:
    """How many live pods should be marked once the Deployment asks for `target` replicas.

    The marked pods are the ones the ReplicaSet has not removed yet, so the live pods it keeps
    are at most `current` plus those; of the live pods, all beyond `target` should be marked.
    Pods beyond that (a rollout's surge, say) are not ours to choose, and pods that do not
    exist yet need no mark: the ReplicaSet just creates fewer.
    """
    live = [p for p in pods if not p.gone]
    marked = sum(p.marked for p in live)
    return max(0, min(len(live), current + marked) - target)


def loads_needed(pods: Sequence[PodSummary], current: int, target: int) -> bool:
    """Whether planning needs the pods' in-flight counts (a choice among pods is to be made)."""
    live = [p for p in pods if not p.gone]
    marked = sum(p.marked for p in live)
    wanted = marks_wanted(pods, current, target)
    return (wanted > marked and marked < len(live)) or 0 < wanted < marked


def plan_removal(
    pods: Sequence[PodSummary],
    current: int,
    target: int,
    in_flight: Mapping[str, int],
    draining: Collection[str] = (),
) -> RemovalPlan:
    """Which pods leave as the Deployment goes from `current` to `target` replicas.

    Marks already placed are kept (they count towards the pods to remove), new ones are chosen
    idle first by `choose_pods_to_remove`; when fewer pods should leave than are marked, the
    busiest marked ones go back to work.
    """
    live = [p for p in pods if not p.gone]
    marked = [p for p in live if p.marked]
    wanted = marks_wanted(pods, current, target)

    def loads(group: Sequence[PodSummary]) -> list[Any]:
        return pod_loads([(p.name, p.ready, False) for p in group], in_flight, list(draining))

    if wanted >= len(marked):
        others = [p for p in live if not p.marked]
        chosen = choose_pods_to_remove(loads(others), wanted - len(marked))
        return RemovalPlan(keep=tuple(p.name for p in marked), mark=tuple(chosen))
    keep = choose_pods_to_remove(loads(marked), wanted)
    return RemovalPlan(
        keep=tuple(keep), unmark=tuple(p.name for p in marked if p.name not in keep)
    )


def stale_drains(
    requests: Mapping[str, float], pods: Collection[str], pool: str, now: float,
    grace: float = STALE_DRAIN_SECONDS,
) -> list[str]:
    """Drain requests (by pod or by `pod:instance`) for this pool's pods that no longer exist.

    Only names a Deployment gives its pods (`<pool>-<hash>-<suffix>`) are considered, so the
    requests of another pool sharing the queue are left alone; a grace period leaves requests
    for pods created after `pods` was listed.
    """
    pattern = re.compile(rf"{re.escape(pool)}-[a-z0-9]+-[a-z0-9]+")
    stale = []
    for key, at in requests.items():
        pod = key.rpartition(":")[0] or key
        if pattern.fullmatch(pod) and pod not in pods and now - at >= grace:
            stale.append(key)
    return sorted(stale)


def queue_load(figures: Any) -> QueueLoad:
    if figures is None:
        return QueueLoad.unavailable()
    return QueueLoad(queued=figures.queued, in_flight=figures.in_flight)


def restore_history(annotation: str | None, now: float) -> ScalingHistory:
    """The history recorded on the Deployment, with its stabilisation window restarted now;
    a fresh history when there is none or it cannot be read."""
    if not annotation:
        return ScalingHistory()
    try:
        data = json.loads(annotation)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        history = ScalingHistory.from_json(data)
    except ValueError as error:
        log.warning(f"ignoring unreadable {HISTORY_ANNOTATION}: {error}")
        return ScalingHistory()
    return replace(history, since=now)


def scaling_condition(
    policy: ScalingPolicy, load: QueueLoad, decision: Decision
) -> ConditionUpdate:
    """The Scaling condition after `decision` was applied."""
    current, replicas = decision.current, decision.replicas
    if replicas > current:
        return ConditionUpdate("Scaling", "True", "ScaledUp", decision.reason)
    if replicas < current:
        return ConditionUpdate("Scaling", "True", "ScaledDown", decision.reason)
    if not load.figures_ok:
        return ConditionUpdate(
            "Scaling", "False", "QueueUnavailable",
            f"queue figures unavailable: holding {_replicas(current)}",
        )
    if policy.fixed:
        return ConditionUpdate(
            "Scaling", "False", "FixedSize",
            f"minReplicas = maxReplicas = {policy.min_replicas}: a fixed-size pool",
        )
    tpr = policy.tasks_per_replica
    raw = math.ceil(load.backlog / tpr)
    need = policy.clamp(raw)
    if raw > policy.max_replicas and current == policy.max_replicas:
        return ConditionUpdate(
            "Scaling", "True", "AtMaximum",
            f"the backlog needs more than maxReplicas ({policy.max_replicas}) {TIMES} {tpr} tasks",
        )
    if current == 0 and load.backlog <= policy.activation_depth:
        return ConditionUpdate(
            "Scaling", "True", "Stable",
            f"scaled to zero; wakes when more than {policy.activation_depth} tasks are queued",
        )
    if need > current:
        return ConditionUpdate(
            "Scaling", "True", "CoolingDown",
            f"the backlog needs {_replicas(need)}; the scale-up waits for its cooldown "
            f"({policy.scale_up_cooldown_seconds:g}s)",
        )
    if need < current:
        return ConditionUpdate(
            "Scaling", "True", "Stabilizing",
            f"the backlog needs {_replicas(need)} of {current}; the scale-down waits for the "
            f"{policy.scale_down_cooldown_seconds:g}s stabilisation window",
        )
    return ConditionUpdate(
        "Scaling", "True", "Stable", f"{_replicas(current)} {TIMES} {tpr} tasks fit the backlog"
    )


def _replicas(count: int) -> str:
    return f"{count} replica" if count == 1 else f"{count} replicas"


# -- effects ---------------------------------------------------------------------------------


class ScaleAborted(Exception):
    """A round could not apply its decision. Marks it placed stay; the next round keeps or
    withdraws them like any others."""

    def __init__(self, condition: ConditionUpdate) -> None:
        super().__init__(condition.message)
        self.condition = condition


async def in_flight_by_pod(queue: TaskQueue) -> dict[str, int]:
    """Tasks leased per pod, over every registered instance — also those whose heartbeat is
    late, so a busy pod never looks idle because its worker missed a beat."""
    per_pod: dict[str, int] = defaultdict(int)
    for instance in await queue.instances():
        per_pod[instance.pod] += instance.held
    return dict(per_pod)


async def scale(
    observation: PoolObservation, pods: Sequence[dict[str, Any]], kube: KubeApi
) -> ActionResult:
    spec = observation.spec
    deployment = observation.deployment
    if deployment is None:
        return ActionResult(conditions=(ConditionUpdate(
            "Scaling", "Unknown", "DeploymentMissing", "no Deployment to scale",
        ),))
    current = int((deployment.get("spec") or {}).get("replicas", 1))
    if spec.paused:
        return ActionResult(
            status_fields={"desiredReplicas": current},
            conditions=(ConditionUpdate(
                "Scaling", "False", "Paused",
                f"spec.paused is set: the pool keeps {_replicas(current)}",
            ),),
        )

    state = observation.state if observation.state is not None else PoolState()
    now = observation.now.timestamp()
    if state.scaling_history is None:
        annotations = (deployment.get("metadata") or {}).get("annotations") or {}
        state.scaling_history = restore_history(annotations.get(HISTORY_ANNOTATION), now)
    policy = ScalingPolicy.from_spec(spec.scaling, spec.worker.concurrency)
    load = queue_load(observation.figures)
    decision = decide(policy, load, current, state.scaling_history, now)
    summaries = [PodSummary.from_body(pod) for pod in pods]

    try:
        plan, drains = await _place_marks(observation, summaries, decision, kube)
        if decision.changed and decision.replicas < current and observation.queue is not None:
            waiting = still_ready(plan.leaving, summaries, drains, now)
            if waiting:
                return ActionResult(
                    status_fields={"desiredReplicas": current},
                    conditions=(ConditionUpdate(
                        "Scaling", "True", "Draining",
                        f"scaling {current} → {decision.replicas} once "
                        f"{', '.join(waiting)} stopped taking work",
                    ),),
                )
        if decision.changed:
            await _patch_replicas(observation, state, decision, kube)
        await _withdraw_marks(observation, plan.unmark, kube)
        await _sweep_drains(observation, state, summaries)
    except ScaleAborted as aborted:
        return ActionResult(
            status_fields={"desiredReplicas": current}, conditions=(aborted.condition,)
        )

    state.scaling_history = decision.history
    fields: dict[str, Any] = {"desiredReplicas": decision.replicas}
    if decision.changed:
        fields["lastScaleTime"] = rfc3339(observation.now)
        fields["lastScaleReason"] = sanitize(decision.reason)
        direction = "up" if decision.replicas > current else "down"
        metrics.record_scale(observation.namespace, observation.name, direction, decision.reason)
        message = decision.reason
        if plan.leaving and decision.replicas < current:
            message += f"; leaving: {', '.join(plan.leaving)}"
        _post(observation, "ScaledUp" if direction == "up" else "ScaledDown", message)
    return ActionResult(
        status_fields=fields, conditions=(scaling_condition(policy, load, decision),)
    )


DRAIN_READY_TIMEOUT_SECONDS = 60.0
"""How long a scale-down waits for its chosen pods to turn unready before it goes ahead."""


def still_ready(leaving: Sequence[str], pods: Sequence[PodSummary],
                drains: Mapping[str, float], now: float) -> list[str]:
    """Chosen pods that are still Ready, within the wait since their drain was requested.

    The ReplicaSet removes unready pods before it looks at deletion costs, so lowering the
    replica count while a chosen pod is still Ready and another (busy) pod happens to be
    unready would remove the busy one. Waiting until the chosen pods have drained (a draining
    worker fails /readyz) makes the marked pods the ReplicaSet's first choice.
    """
    ready = {p.name for p in pods if p.ready and not p.gone}
    return [
        name for name in leaving
        if name in ready and now - drains.get(name, now) < DRAIN_READY_TIMEOUT_SECONDS
    ]


async def _place_marks(
    observation: PoolObservation,
    pods: Sequence[PodSummary],
    decision: Decision,
    kube: KubeApi,
) -> tuple[RemovalPlan, dict[str, float]]:
    """Mark the pods that leave (deletion cost first, then the drain request, so a crash in
    between leaves a mark the next round completes); return the whole plan and the drain
    requests read before it (a drain requested here is as old as the round: absent)."""
    current, target = decision.current, decision.replicas
    wanted = marks_wanted(pods, current, target)
    marked = [p.name for p in pods if p.marked and not p.gone]
    if wanted == 0 and not marked:
        return RemovalPlan(), {}
    queue = observation.queue
    in_flight: dict[str, int] = {}
    draining: dict[str, float] = {}
    if queue is not None:
        try:
            if loads_needed(pods, current, target):
                in_flight = await in_flight_by_pod(queue)
            draining = await queue.drain_requests()
        except REDIS_ERRORS as error:
            raise ScaleAborted(_redis_problem(current, error)) from None
    elif target < current:
        log.warning(
            f"{observation.namespace}/{observation.name}: choosing pods to remove without "
            "the queue: in-flight counts unknown, no drain requested"
        )
    plan = plan_removal(pods, current, target, in_flight, draining)

    for name in plan.mark:
        patch = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: CHOSEN_COST}}}
        try:
            await kube.patch_pod(observation.namespace, name, patch)
        except ApiException as error:
            raise ScaleAborted(ConditionUpdate(
                "Scaling", "False", "ScaleFailed",
                f"cannot mark pod {name} for removal: {api_error_message(error)}",
            )) from None
    to_drain = [name for name in plan.leaving if name not in draining]
    if queue is not None and to_drain:
        try:
            for name in to_drain:
                await queue.request_drain(name)
        except REDIS_ERRORS as error:
            raise ScaleAborted(_redis_problem(current, error)) from None
    if plan.mark:
        metrics.record_drains(observation.namespace, observation.name, "scale_down",
                              len(plan.mark))
        loads = pod_loads([(p.name, p.ready, p.gone) for p in pods], in_flight)
        busy = interrupted_if_removed(loads, plan.mark)
        detail = f"{busy} tasks in flight get drainSeconds to finish" if busy else "all idle"
        _post(observation, "DrainingPods",
              f"asked pods {', '.join(plan.mark)} to drain before removal ({detail})")
    return plan, draining


async def _patch_replicas(
    observation: PoolObservation, state: PoolState, decision: Decision, kube: KubeApi
) -> None:
    history = json.dumps(decision.history.to_json(), separators=(",", ":"))
    patch = {
        "metadata": {"annotations": {HISTORY_ANNOTATION: history}},
        "spec": {"replicas": decision.replicas},
    }
    try:
        async with state.lock:
            patched = await kube.patch_deployment(observation.namespace, observation.name, patch)
            state.remember_deployment(patched)
    except ApiException as error:
        log.warning(f"{observation.namespace}/{observation.name}: scaling failed: "
                    f"{api_error_message(error)}")
        raise ScaleAborted(ConditionUpdate(
            "Scaling", "False", "ScaleFailed",
            f"cannot set the Deployment's replicas to {decision.replicas}: "
            f"{api_error_message(error)}",
        )) from None


async def _withdraw_marks(
    observation: PoolObservation, names: Sequence[str], kube: KubeApi
) -> None:
    """Put pods that no longer leave back to work: clear the drain, then the deletion cost.

    In this order a failure half-way leaves the pod marked, so the next round tries again;
    the other order could leave a drained pod that nothing marks any more.
    """
    if not names:
        return
    patch = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: None}}}
    try:
        for name in names:
            if observation.queue is not None:
                await observation.queue.clear_drain(name)
            await kube.patch_pod(observation.namespace, name, patch)
    except ApiException as error:
        log.warning(f"cannot withdraw the removal mark of a pod: {api_error_message(error)}")
        return
    except REDIS_ERRORS as error:
        log.warning(f"cannot withdraw a drain request: {error}")
        return
    _post(observation, "DrainWithdrawn",
          f"pods {', '.join(names)} are no longer removed and return to work")


async def _sweep_drains(
    observation: PoolObservation, state: PoolState, pods: Sequence[PodSummary]
) -> None:
    """Clear drain requests of this pool's pods that no longer exist (at most every
    DRAIN_SWEEP_SECONDS), so they do not pile up in Redis."""
    queue = observation.queue
    moment = time.monotonic()
    if queue is None or (
        state.drains_swept is not None and moment - state.drains_swept < DRAIN_SWEEP_SECONDS
    ):
        return
    state.drains_swept = moment
    try:
        requests = await queue.drain_requests()
        existing = {p.name for p in pods}
        for key in stale_drains(requests, existing, observation.name, time.time()):
            await queue.clear_drain(key)
    except REDIS_ERRORS as error:
        log.warning(f"cannot clear stale drain requests: {error}")


def _redis_problem(current: int, error: BaseException) -> ConditionUpdate:
    detail = sanitize(str(error) or type(error).__name__)
    return ConditionUpdate(
        "Scaling", "False", "QueueUnavailable",
        f"cannot read the workers' load to choose pods ({detail}): holding {_replicas(current)}",
    )


def _post(observation: PoolObservation, reason: str, message: str) -> None:
    text = sanitize(message)
    log.info(f"{observation.namespace}/{observation.name}: {reason}: {text}")
    kopf.info(cast(kopf.Body, observation.pool), reason=reason, message=text)
