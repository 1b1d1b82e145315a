"""Which worker pods are dead or stuck, and what to do about them: a pure decision.

Inputs are plain data — the pool's pods as Kubernetes reports them, the worker instances Redis
knows, the drains already requested — and the output is a list of actions for the operator to
apply. Requeueing is idempotent in the protocol, so deciding the same thing twice (a replayed
event, two operator replicas, a restart half-way) costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentpool.models import parse_rfc3339
from agentpool.protocol import WORKER_LIVENESS_WINDOW, InstanceState
from agentpool.scaling.scaledown import CHOSEN_COST, DELETION_COST_ANNOTATION, RELEASED_COST
from agentpool_operator.deployment import WORKER_CONTAINER, pod_name_prefix


@dataclass(frozen=True)
class PodView:
    """What recovery needs to know about one worker pod."""

    name: str
    phase: str = "Running"
    deleting: bool = False
    deletion_deadline: float | None = None
    """When a deleted pod's grace period ends and its containers are killed (epoch seconds)."""
    reason: str | None = None
    node: str | None = None
    ready: bool = True
    ready_changed_at: float | None = None
    """When the Ready condition last changed (epoch seconds)."""
    restarts: int = 0
    container_started_at: float | None = None
    """When the current worker container started (epoch seconds), if it is running."""
    startup_passed: bool = True
    """The kubelet counts the worker container as started: its startup probe passed."""
    scaling_down: bool = False
    """Chosen by a scale-down: unready on purpose while it finishes its runs; not stuck."""


@dataclass(frozen=True)
class InstanceView:
    """A worker process known in Redis."""

    pod: str
    instance: str
    started: float
    held: int = 0
    last_seen: float | None = None
    """Its last heartbeat (epoch seconds), when known."""


CONTAINER_RESTARTED = "worker container restarted"
POD_GONE = "pod no longer exists"


@dataclass(frozen=True)
class Requeue:
    pod: str
    reason: str
    instances: tuple[str, ...] | None = None
    """Only these instances of the pod (a restarted container's predecessors, the silent ones
    of a pod no longer listed); None = all."""
    keep_drain: bool = False
    """Leave the pod's drain request (its worker still runs and must claim no more)."""


@dataclass(frozen=True)
class RequestDrain:
    pod: str
    reason: str


@dataclass(frozen=True)
class DeletePod:
    pod: str
    reason: str


Action = Requeue | RequestDrain | DeletePod


def instance_view(instance: InstanceState) -> InstanceView:
    return InstanceView(instance.pod, instance.instance, instance.started, instance.held,
                        instance.last_seen)


def judged_instances(
    instances: Iterable[InstanceState], pods: Collection[str], now: float
) -> list[InstanceView]:
    """The instances to judge against a full pod list: those of the listed pods, and those of
    other pods once they stopped heart-beating (until then, an instance may belong to a pod
    created after the list was read)."""
    return [
        instance_view(i) for i in instances
        if i.pod in pods or now - i.last_seen >= WORKER_LIVENESS_WINDOW
    ]


@dataclass(frozen=True)
class RecoveryPolicy:
    unready_grace_seconds: float = 60
    drain_seconds: float = 60
    max_unavailable: int | str = "25%"


@dataclass(frozen=True)
class RecoveryInputs:
    pods: Sequence[PodView]
    instances: Sequence[InstanceView] = ()
    drains: Mapping[str, float] = field(default_factory=dict)
    """Pods asked to drain by recovery, with the time the request was made."""
    gone_nodes: frozenset[str] = frozenset()
    """Nodes of the pool's pods that no longer exist: their pods are gone with them."""
    desired_replicas: int = 1
    pods_complete: bool = True
    """The pod list is the full set of the pool's pods (not a single event)."""


def unavailable_budget(max_unavailable: int | str, replicas: int) -> int:
    """Pods that may be replaced at once. A percentage rounds down, as a Deployment's
    maxUnavailable does, yet allows at least one when it is not 0: the default 25% of a pool of
    one to three pods would otherwise replace none. 0 (or 0%) allows none, as in Kubernetes."""
    if isinstance(max_unavailable, str) and max_unavailable.endswith("%"):
        share = float(max_unavailable[:-1])
        return 0 if share == 0 else max(1, math.floor(replicas * share / 100))
    return max(0, int(max_unavailable))


def pod_is_dead(pod: PodView, gone_nodes: frozenset[str]) -> str | None:
    """Why this pod's workers can no longer run tasks, or None when they still can."""
    if pod.deleting:
        return "pod deleted"
    if pod.phase == "Failed":
        return f"pod {pod.reason.lower() if pod.reason else 'failed'}"
    if pod.phase == "Succeeded":
        return "pod exited"
    if pod.node is not None and pod.node in gone_nodes:
        return f"node {pod.node} is gone"
    return None


def shutting_down_gracefully(pod: PodView, gone_nodes: frozenset[str], now: float) -> bool:
    """A deleted pod whose worker container still runs within the pod's grace period.

    The worker got SIGTERM: it finishes what it can within drainSeconds and hands the rest back
    itself, without spending an attempt. Requeueing now would abort that work on every rollout
    and scale-down and count a lost attempt, so its tasks wait until the container stops, the
    pod is gone or the grace period is over (or their leases expire).
    """
    return (
        pod.deleting
        and pod.phase == "Running"
        and pod.container_started_at is not None
        and pod.deletion_deadline is not None
        and now < pod.deletion_deadline
        and pod.node not in gone_nodes
    )


def decide_recovery(inputs: RecoveryInputs, policy: RecoveryPolicy, now: float) -> list[Action]:
    actions: list[Action] = []
    by_pod: dict[str, list[InstanceView]] = {}
    for inst in inputs.instances:
        by_pod.setdefault(inst.pod, []).append(inst)
    pods = {pod.name: pod for pod in inputs.pods}

    for pod in inputs.pods:
        dead = pod_is_dead(pod, inputs.gone_nodes)
        if dead is not None:
            if shutting_down_gracefully(pod, inputs.gone_nodes, now):
                continue
            # A worker that heartbeats on past its pod's end (its node cut off from the API
            # server: the pod stays Terminating) would claim again what is taken back, each
            # time an attempt spent: it is asked to drain, and its request is kept.
            zombie = heartbeating(pod.name, by_pod.get(pod.name, ()), now)
            actions.append(Requeue(pod.name, dead, keep_drain=zombie))
            if zombie:
                actions.append(RequestDrain(pod.name, f"{dead}, yet its worker still runs"))
            continue
        previous = _previous_instances(pod, by_pod.get(pod.name, []))
        if previous:
            actions.append(Requeue(pod.name, CONTAINER_RESTARTED, instances=previous))

    if inputs.pods_complete:
        for pod_name, instances in sorted(by_pod.items()):
            if pod_name not in pods and any(i.held for i in instances):
                # only the instances judged (silent): another of the same name may live
                actions.append(Requeue(pod_name, POD_GONE, instances=tuple(
                    sorted(i.instance for i in instances if i.held))))

    actions.extend(_replace_stuck(inputs, policy, now))
    return actions


def gone_pod_requeues(
    instances: Iterable[InstanceView], pods: Collection[str], pool: str
) -> list[Requeue]:
    """The pool's pods whose worker instances hold tasks although the pod is not among `pods`.

    For a pool's first round after the operator (re)starts: deaths while no operator ran
    produced no event anyone saw. Unlike a regular round, no liveness window is waited for, so
    `pods` must name the pods that exist as read *after* `instances`: a pod exists before its
    worker registers, so an instance read first whose pod a later read does not find belongs to
    a pod that is gone, not to one created since. Only pods named as the pool's Deployment names
    them (`<pool>-…`) are judged: a worker outside the cluster, or of another pool on the same
    queue, keeps its tasks until its heartbeat or its leases run out.
    """
    held = {i.pod for i in instances if i.held and i.pod.startswith(pod_name_prefix(pool))}
    return [Requeue(pod, POD_GONE) for pod in sorted(held - set(pods))]


def _previous_instances(pod: PodView, instances: Iterable[InstanceView]) -> tuple[str, ...]:
    """Instances of a restarted container's earlier processes that still hold work.

    An instance that started before the current container did belongs to a process that is
    gone (liveness kill, OOM kill, crash).
    """
    if pod.restarts == 0 or pod.container_started_at is None:
        return ()
    started = pod.container_started_at
    return tuple(sorted(i.instance for i in instances if i.started < started and i.held))


def unready_since(pod: PodView) -> float | None:
    """Since when the pod's worker has been unready after its start, or None while the worker
    container is not running or its startup probe has not passed.

    The Ready condition is False from a pod's first sync, and its lastTransitionTime stays put
    until the pod becomes ready: image pulls and init containers (a model download) would
    count as unready time. That phase is the kubelet's (the startup probe restarts a worker
    that does not come up), so unready time counts from the worker container's start at the
    earliest.
    """
    if pod.container_started_at is None or not pod.startup_passed:
        return None
    return max(pod.container_started_at, pod.ready_changed_at or pod.container_started_at)


def heartbeating(pod: str, instances: Iterable[InstanceView], now: float) -> bool:
    """Whether a worker instance of the pod heart-beat within the liveness window."""
    return any(
        i.pod == pod and i.last_seen is not None and now - i.last_seen < WORKER_LIVENESS_WINDOW
        for i in instances
    )


def _replace_stuck(inputs: RecoveryInputs, policy: RecoveryPolicy, now: float) -> list[Action]:
    """Drain, then delete, stuck pods within the budget: unready past the grace period while
    their worker does not heartbeat (or never registered).

    A worker that heartbeats is alive and reaches Redis: its unreadiness is its own verdict
    (its `ready` hook failing while an LLM API is down, say). A new pod would be just as
    unready, and during a shared outage replacing them would cycle through the whole pool.

    A budget of 0 starts no drain; a pod asked to drain before is still deleted once drained:
    it takes no work any more, and would stay idle.
    """
    budget = unavailable_budget(policy.max_unavailable, max(1, inputs.desired_replicas))
    candidates = [pod for pod in inputs.pods if not pod.scaling_down]
    in_progress = {
        pod.name for pod in candidates if pod.name in inputs.drains or pod.deleting
    }
    actions: list[Action] = []
    for pod in sorted(candidates, key=lambda p: unready_since(p) or 0):
        if pod.deleting or pod.phase != "Running" or pod.ready:
            continue
        since = unready_since(pod)
        if since is None or now - since < policy.unready_grace_seconds:
            continue
        unready_for = now - since
        requested = inputs.drains.get(pod.name)
        if requested is None:
            if heartbeating(pod.name, inputs.instances, now) or len(in_progress) >= budget:
                continue
            in_progress.add(pod.name)
            actions.append(RequestDrain(
                pod.name, f"unready for {int(unready_for)}s, no worker heartbeat"))
        elif now - requested >= policy.drain_seconds or _holds_nothing(pod.name, inputs):
            actions.append(DeletePod(pod.name, f"unready for {int(unready_for)}s, drained"))
    return actions


def _holds_nothing(pod: str, inputs: RecoveryInputs) -> bool:
    return all(i.held == 0 for i in inputs.instances if i.pod == pod)


def _timestamp(value: Any) -> float | None:
    moment = parse_rfc3339(value)
    return None if moment is None else moment.timestamp()


def pod_view(pod: Mapping[str, Any]) -> PodView:
    """Reduce a Pod object (as the API returns it) to what recovery looks at."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    ready, ready_changed = True, None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
            ready_changed = _timestamp(cond.get("lastTransitionTime"))
    restarts, started, startup_passed = 0, None, True
    statuses = status.get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == WORKER_CONTAINER or len(statuses) == 1:
            restarts = int(cs.get("restartCount") or 0)
            running = (cs.get("state") or {}).get("running") or {}
            started = _timestamp(running.get("startedAt"))
            startup_passed = cs.get("started") is not False
    return PodView(
        name=meta.get("name", ""),
        phase=status.get("phase") or "Pending",
        deleting=bool(meta.get("deletionTimestamp")),
        deletion_deadline=_timestamp(meta.get("deletionTimestamp")),
        reason=status.get("reason"),
        node=spec.get("nodeName"),
        ready=ready if status.get("phase") == "Running" else False,
        ready_changed_at=ready_changed,
        restarts=restarts,
        container_started_at=started,
        startup_passed=startup_passed,
        scaling_down=(meta.get("annotations") or {}).get(DELETION_COST_ANNOTATION)
        in (CHOSEN_COST, RELEASED_COST),
    )
