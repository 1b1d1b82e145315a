"""Scaling applied to one pool: size the Deployment, drain pods until their runs end.

Each round of the pool's loop calls `scale` with what it observed; the decisions are pure
functions in `scaling_plan` (what the policy sees, which pods to mark, how many replicas), and
this module reads their inputs and applies their outputs. The Deployment is written only when
its replica count changes, a replica is given back (a give-back and a new pod in one round
leave the count as it was, yet the pod given back must be named), the last decision turns zero
or back (see below) or someone else wrote the count.

Scale-down never interrupts a run. A pod chosen for removal (idle first, then the fewest and
oldest runs, `scaledown.removal_rank`) is *marked* with
``controller.kubernetes.io/pod-deletion-cost: -1000`` and asked to drain in Redis: its worker
claims nothing new, turns unready and finishes its runs however long they take (at most
taskTimeoutSeconds); its replica stays. Once it holds no run its mark becomes ``-2000``
(released), and at a later round, when it is unready and no unmarked pod is, its replica
goes (every such pod's in one round): the ReplicaSet, which removes unready pods first and
then the lowest cost, removes exactly those pods. A released pod that claimed a run before
its drain request reached Redis goes back to ``-1000`` first, in a round that gives no
replica back, so the ReplicaSet never takes it for an idle one. The names of the pods whose
replica was given back are kept in an annotation of the Deployment, written with the replica
count, so no replica is given back twice. The pods of a node being emptied (see
`disruption`) leave the same way, at once and for good: never taken back, never kept as the
spare; the busy label that keeps an eviction off a pod with runs is set here too. SIGTERM's
drainSeconds is left to rollouts, deletions and evictions of pools that do not protect their
busy pods.

One drained pod whose runs ended may stay as a spare (the decision's `keep`, see
`scaling.policy`): it keeps its mark and its replica until the recent need no longer calls
for it. A scale-up first takes draining pods back into service (the drain and the mark are
withdrawn: a running pod serves at once, a new one after its start-up) and starts new pods
only for the rest. Marks and drain requests are the state, kept in the cluster and in Redis,
never only in memory, so a retried round or a restarted operator chooses no more pods.

The policy's history lives in the pool's `PoolState`; each scale also records it in an
annotation of the Deployment, in the same write as the replica count, so a restarted operator
keeps its scale times; and also when its last decision turns zero or back without a change of
the count (a decision of zero only releases pods at first), as a restarted operator tells an
asleep pool by it. A restored history restarts its stabilisation window: the recommendations
the operator did not see while it was away might have forbidden a scale-down.
A paused pool's history restarts it too (and its idle time), at the first round after the
pause: no decision saw the queue meanwhile. The count written rides in another annotation: a
count that differs from it was written by someone else (kubectl scale, a leftover HPA), which
one Warning `ReplicasChangedOutside` says, naming the writer from the Deployment's
managedFields, in the round that writes the operator's own count back (no Warning when the
operator's own field manager wrote it last: an older operator, which kept no annotation).
A count set while paused is the user's: the paused round records it in both annotations
(`_accept_count`), and the first round after the pause takes it as the last decision, so a
pool set to zero by hand stays asleep and one set above zero is awake.

A marked pod deleted by someone else (by hand, a rollout, an eviction) before its replica was
given back takes the replica with it (`scaling_plan.lost_replicas`): the ReplicaSet removes
the pod it started in its place instead of the operator draining and removing that one later.

A paused pool keeps its replica count and chooses no pod, and it takes back into service the
pods its scale-downs asked to drain (`scaling_plan.plan_paused`): whoever pauses a pool wants
every pod it has to serve. The pods of a node being emptied, those whose replica was given
back and those being deleted keep draining. After the pause a scale-down chooses afresh.

The `Scaling` condition says whether the autoscaler is in control and what it last did:
True with ScaledUp, ScaledDown, Stable, Stabilizing (a scale-down waits for the
stabilisation window or the cooldown), CoolingDown (a scale-up waits for its cooldown) or
AtMaximum; False with Paused, FixedSize or QueueUnavailable, or with the reason the operator
does not write the Deployment (e.g. ServiceAccountRefused); Unknown with DeploymentMissing.
A pool whose decision is zero also words `Ready` (True, ScaledToZero): the pods that finish
their runs hold replicas and are unready on purpose, not missing workers.
Its messages avoid figures that move every poll, so holding does not rewrite the status;
status.drainingReplicas and status.drainingSince say how many pods drain, since when (the pods
a rollout or a deletion stopped while they run tasks count too).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from agentpool.protocol import TaskQueue
from agentpool.redis_errors import REDIS_FAILURES
from agentpool.scaling.policy import (
    Decision,
    ScalingPolicy,
    decide,
)
from agentpool.scaling.scaledown import (
    CHOSEN_COST,
    DELETION_COST_ANNOTATION,
    RELEASED_COST,
)

from . import metrics
from .context import PoolState
from .disruption import GuardedPod, guard_changes
from .disruption_actions import apply_guard, going_nodes_of
from .kube import KubeApi, api_error_message
from .observation import ActionResult, PoolObservation
from .scaling_plan import (
    HISTORY_ANNOTATION,
    RELEASED_ANNOTATION,
    REPLICAS_ANNOTATION,
    PodSummary,
    PodWork,
    ScalePlan,
    draining_fields,
    lost_replicas,
    not_serving_pods,
    plan_paused,
    plan_scale,
    queue_load,
    replicas_changed_outside,
    replicas_text,
    restore_history,
    scaling_condition,
    serving_load,
    serving_replicas,
    sleep_unrecorded,
    stale_drains,
    zero_ready,
)
from .status import ConditionUpdate, Problem, rfc3339, sanitize

SCALE_FAILED = "ScaleFailed"
DRAIN_SWEEP_SECONDS = 30.0
"""Least time between two looks for stale drain requests of one pool."""


log = logging.getLogger(__name__)


class ScaleAborted(Exception):
    """A round could not apply its decision. Marks it placed stay; the next round keeps or
    withdraws them like any others."""

    def __init__(self, condition: ConditionUpdate) -> None:
        super().__init__(condition.message)
        self.condition = condition




async def work_by_pod(queue: TaskQueue) -> dict[str, PodWork]:
    """Tasks leased per pod, and when their runs began, over every registered instance —
    also those whose heartbeat is late, so a busy pod never looks idle because its worker
    missed a beat.

    Run start times come only from instances that hold tasks, at most as many as they hold
    (the newest: a run that ended since the last heartbeat is more likely an old one). An
    instance that died stays registered for a while with the runs of its last heartbeat,
    whose ages would keep growing as if they still ran."""
    held: dict[str, int] = defaultdict(int)
    since: dict[str, list[float]] = defaultdict(list)
    for instance in await queue.instances():
        held[instance.pod] += instance.held
        if instance.held > 0:
            since[instance.pod].extend(sorted(instance.runs_since)[-instance.held:])
    return {pod: PodWork(count, tuple(since[pod])) for pod, count in held.items()}


async def scale(
    observation: PoolObservation, pods: Sequence[dict[str, Any]], kube: KubeApi
) -> ActionResult:
    spec = observation.spec
    deployment = observation.deployment
    if deployment is None:
        return ActionResult(conditions=(not_scaling(observation.deployment_problem),))
    replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    state = observation.state if observation.state is not None else PoolState()
    now = observation.now.timestamp()
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    if spec.paused:
        # No decision sees the queue while paused: as after a restart, the history restarts
        # its stabilisation window (and its idle time) at the first round after the pause.
        history = state.scaling_history
        if history is None:
            history = restore_history(annotations.get(HISTORY_ANNOTATION), now)
        state.scaling_history = replace(history, since=None, idle_since=None)
        await _accept_count(observation, state, replicas, kube)
        draining, problem = await _pause(observation, state, pods, replicas, now, kube)
        return ActionResult(
            status_fields={"desiredReplicas": replicas, "rateLimitedBy": None, **draining},
            conditions=(ConditionUpdate(
                "Scaling", "False", "Paused",
                f"spec.paused is set: the pool keeps {replicas_text(replicas)}",
            ),),
            problems=(problem,) if problem else (),
        )

    # A history kept with no start of its window: the first round after a pause. The count
    # found is the user's, not another writer's, and the pool is asleep only if it is zero,
    # whatever was decided before the pause.
    resumed = state.scaling_history is not None and state.scaling_history.since is None
    if state.scaling_history is None:
        state.scaling_history = restore_history(annotations.get(HISTORY_ANNOTATION), now)
    if resumed:
        state.scaling_history = replace(state.scaling_history, replicas=replicas)
    given_back = _names(annotations.get(RELEASED_ANNOTATION))
    policy = ScalingPolicy.from_spec(spec.scaling, spec.worker.concurrency,
                                     [limit.name for limit in spec.rate_limits or ()])
    protect = spec.worker.protect_busy_pods
    going, node_problem = await going_nodes_of(kube, pods) if protect else (frozenset(), None)
    summaries = [PodSummary.from_body(pod, going) for pod in pods]
    queue = observation.queue
    work: dict[str, PodWork] | None = None
    drains: dict[str, float] = {}

    async def read_work() -> None:
        nonlocal work, drains
        if queue is None or work is not None:
            return
        try:
            work = await work_by_pod(queue)
            drains = await queue.drain_requests()
        except REDIS_FAILURES as error:
            raise ScaleAborted(_redis_problem(replicas, error)) from None

    try:
        figures = queue_load(observation.figures)
        guarded = any(p.guarded for p in summaries)
        deleted_marked = any(p.marked and p.stopping_since is not None
                             and p.name not in given_back for p in summaries)
        if ((figures.figures_ok and figures.in_flight)
                or not_serving_pods(summaries, given_back) or guarded or deleted_marked):
            await read_work()
        serving = serving_replicas(summaries, replicas, given_back,
                                   lost_replicas(summaries, given_back, work))
        load = serving_load(figures, summaries, work or {}, given_back, now)
        load = replace(load, limit_waits=observation.limit_waits)
        decision = decide(policy, load, serving, state.scaling_history, now)
        if decision.replicas < serving:
            await read_work()
        plan = plan_scale(summaries, replicas, given_back, decision.replicas, work, now, drains,
                          decision.keep)
        await _apply_marks(observation, plan, replicas, summaries, work or {}, drains, kube)
        outside = replicas_changed_outside(deployment)
        count = plan.writes_deployment(replicas) or outside is not None
        if count or sleep_unrecorded(annotations.get(HISTORY_ANNOTATION), decision.history):
            await _patch_replicas(observation, state, decision, plan, kube, count=count)
            if outside is not None and not resumed:
                _post(observation, "ReplicasChangedOutside", outside.message(plan.replicas),
                      warning=True)
        await _withdraw_marks(observation, plan.withdraw, kube)
        await _delete_orphans(observation, plan.delete, kube)
        await _sweep_drains(observation, state, summaries)
        if work is not None or figures.figures_ok:
            await _guard(observation, state, summaries, work or {}, plan.given_back, now, kube)
    except ScaleAborted as aborted:
        condition = aborted.condition
        # The Deployment or a pod refused: the pool cannot grow or shrink, which its health
        # must say (an unreachable queue says so through QueueReachable already).
        failed = condition.reason == SCALE_FAILED
        return ActionResult(
            status_fields={"desiredReplicas": replicas}, conditions=(condition,),
            problems=(Problem(SCALE_FAILED, condition.message),) if failed else (),
        )

    state.scaling_history = decision.history
    drains_read = work is not None or (queue is not None and figures.figures_ok)
    draining = draining_fields(summaries, plan, drains if drains_read else None, work or {})
    fields: dict[str, Any] = {"desiredReplicas": plan.replicas, **draining}
    fields["rateLimitedBy"] = decision.limited.limit if decision.limited else None
    if plan.start:
        metrics.record_pod_starts(observation.namespace, observation.name, plan.start)
    if plan.give_back:
        _post(observation, "DrainedPodsRemoved",
              f"pods {', '.join(plan.give_back)} finished their runs; their replicas go")
    if plan.lost:
        _post(observation, "DrainedPodsRemoved", _lost_message(plan))
    if decision.changed:
        fields["lastScaleTime"] = rfc3339(observation.now)
        fields["lastScaleReason"] = sanitize(decision.reason)
        direction = "up" if decision.replicas > serving else "down"
        metrics.record_scale(observation.namespace, observation.name, direction, decision.reason)
        message = decision.reason
        leaving = plan.drain + tuple(n for n in plan.release if n not in given_back)
        if direction == "down" and leaving:
            message += f"; leaving: {', '.join(sorted(leaving))}"
        if plan.withdraw:
            message += f"; back from draining: {', '.join(plan.withdraw)}"
        _post(observation, "ScaledUp" if direction == "up" else "ScaledDown", message)
    conditions = [scaling_condition(policy, load, decision)]
    if decision.replicas == 0:
        conditions.append(zero_ready(policy, draining.get("drainingReplicas")))
    return ActionResult(
        status_fields=fields, conditions=tuple(conditions),
        problems=(node_problem,) if node_problem else (),
    )


def _lost_message(plan: ScalePlan) -> str:
    deleted = f"pods {', '.join(plan.lost)} were deleted while they drained"
    kept = plan.replacements_kept
    if not kept:
        return (f"{deleted}; their replicas go with them (the pods started in their place are "
                "removed)")
    if kept == len(plan.lost):
        return f"{deleted}; the pods started in their place stay, as the scale-up's new pods"
    return (f"{deleted}; {kept} of the pods started in their place stay as the scale-up's new "
            "pods, the others go with the replicas of the deleted ones")


async def _guard(
    observation: PoolObservation, state: PoolState, pods: Sequence[PodSummary],
    work: Mapping[str, PodWork], given_back: Collection[str], now: float, kube: KubeApi,
) -> None:
    """Label the busy pods, and the leaving ones until their replica is given back, for the
    pool's PodDisruptionBudget (see `disruption`)."""
    guarded = [
        GuardedPod(p.name, p.guarded, work.get(p.name, PodWork()).in_flight,
                   leaving=p.leaving and p.name not in given_back)
        for p in pods if not p.gone
    ]
    changes = guard_changes(guarded, state.guard.idle_since, now,
                            enabled=observation.spec.worker.protect_busy_pods)
    await apply_guard(observation.namespace, changes, kube)


async def _pause(
    observation: PoolObservation, state: PoolState, pods: Sequence[dict[str, Any]],
    replicas: int, now: float, kube: KubeApi,
) -> tuple[dict[str, Any], Problem | None]:
    """A paused pool chooses no pod and takes back the pods its scale-downs drain (see
    `plan_paused`); its busy pods stay guarded. Gives the status's draining fields (none when
    the queue could not be read: the last ones stay) and a problem reading nodes.

    Nothing is withdrawn without the queue: a drain request left in place with the mark gone
    would keep a pod idle that nothing marks. Each pod's drain is cleared before its mark: a
    Redis failure leaves that pod, and those after it, draining and marked as they were; a
    mark that could not be taken off is taken off by the next round (or, resumed, the pod
    still marked is asked to drain again)."""
    summaries = [PodSummary.from_body(pod) for pod in pods]
    figures = queue_load(observation.figures)
    queue = observation.queue
    if queue is None or not figures.figures_ok:
        return {}, None
    problem = None
    if observation.spec.worker.protect_busy_pods and any(
            p.marked and not p.gone for p in summaries):
        going, problem = await going_nodes_of(kube, pods)
        summaries = [PodSummary.from_body(pod, going) for pod in pods]
    deployment = observation.deployment or {}
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    given_back = _names(annotations.get(RELEASED_ANNOTATION))
    plan = plan_paused(summaries, replicas, given_back, nodes_known=problem is None)
    withdrawn = await _withdraw_marks(
        observation, plan.withdraw, kube,
        "the pool is paused: pods {names}, asked to drain by a scale-down, return to work")
    plan = replace(plan, withdraw=withdrawn)
    work: dict[str, PodWork] = {}
    if figures.in_flight or any(p.guarded for p in summaries):
        try:
            work = await work_by_pod(queue)
        except REDIS_FAILURES:
            return {}, problem
    # As before this round: a paused pool gives no replica back, so its idle leaving pods are
    # not held guarded (the node's drain would wait for the pause's end).
    unheld = [replace(p, leaving=False) for p in summaries]
    await _guard(observation, state, unheld, work, (), now, kube)
    drains: dict[str, float] = {}
    back = {*plan.withdraw, *plan.given_back}
    if any(p.marked and not p.gone and p.name not in back for p in summaries):
        try:
            drains = await queue.drain_requests()
        except REDIS_FAILURES:
            return {}, problem
    return draining_fields(summaries, plan, drains, work), problem


def _names(annotation: str | None) -> tuple[str, ...]:
    return tuple(n for n in (annotation or "").split(",") if n)


async def _apply_marks(
    observation: PoolObservation,
    plan: ScalePlan,
    current: int,
    pods: Sequence[PodSummary],
    work: Mapping[str, PodWork],
    drains: Mapping[str, float],
    kube: KubeApi,
) -> None:
    """Mark the pods chosen now (deletion cost first, then the drain request, so a crash in
    between leaves a mark the next round completes) and the drained ones released."""
    marks = [(n, CHOSEN_COST) for n in plan.drain] + [(n, RELEASED_COST) for n in plan.release]
    for name, cost in marks:
        patch = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost}}}
        try:
            await kube.patch_pod(observation.namespace, name, patch)
        except ApiException as error:
            raise ScaleAborted(ConditionUpdate(
                "Scaling", "False", SCALE_FAILED,
                f"cannot mark pod {name} for removal: {api_error_message(error)}",
            )) from None
    queue = observation.queue
    back = set(plan.withdraw) | set(plan.given_back)
    marked = [p.name for p in pods if p.marked and not p.gone and p.name not in back]
    to_drain = [n for n in (*marked, *plan.drain, *plan.release) if n not in drains]
    if queue is not None and to_drain:
        try:
            for name in dict.fromkeys(to_drain):
                await queue.request_drain(name)
        except REDIS_FAILURES as error:
            raise ScaleAborted(_redis_problem(current, error)) from None
    was_marked = {p.name for p in pods if p.marked}
    leaving = {p.name for p in pods if p.leaving}
    fresh = [n for n in (*plan.drain, *plan.release) if n not in was_marked]
    leavers = [n for n in fresh if n in leaving]
    if leavers:
        _report_drains(observation, "node_drain", leavers, work, "NodeDraining", (
            f"pods {', '.join(leavers)} are on a node being drained: they take no new task "
            "and leave once their runs end ({detail}); new pods start elsewhere"))
    chosen = [n for n in fresh if n not in leaving]
    if chosen:
        _report_drains(observation, "scale_down", chosen, work, "DrainingPods",
                       f"asked pods {', '.join(chosen)} to drain before removal ({{detail}})")


def _report_drains(observation: PoolObservation, purpose: str, names: Sequence[str],
                   work: Mapping[str, PodWork], reason: str, message: str) -> None:
    """Count the pods asked to drain and post the Event; `message` has a {detail} slot for
    what their runs are."""
    metrics.record_drains(observation.namespace, observation.name, purpose, len(names))
    runs = sum(work.get(n, PodWork()).in_flight for n in names)
    detail = f"{runs} runs in flight finish first" if runs else "all idle"
    _post(observation, reason, message.format(detail=detail))


async def _patch_replicas(
    observation: PoolObservation, state: PoolState, decision: Decision, plan: ScalePlan,
    kube: KubeApi, count: bool = True,
) -> None:
    """Write the count with the history, or (`count` False) the history alone: a count
    written from this round's read of the Deployment could undo, unseen, one set since by
    someone else. The history alone failing only logs: the decision stands in memory."""
    history = json.dumps(decision.history.to_json(), separators=(",", ":"))
    patch: dict[str, Any] = {"metadata": {"annotations": {HISTORY_ANNOTATION: history}}}
    if count:
        patch["metadata"]["annotations"].update({
            RELEASED_ANNOTATION: ",".join(plan.given_back) or None,
            REPLICAS_ANNOTATION: str(plan.replicas),
        })
        patch["spec"] = {"replicas": plan.replicas}
    try:
        async with state.lock:
            patched = await kube.patch_deployment(observation.namespace, observation.name, patch)
            state.remember_deployment(patched)
    except ApiException as error:
        if not count:
            log.warning(f"{observation.namespace}/{observation.name}: cannot record the "
                        f"scaling history: {api_error_message(error)}")
            return
        log.warning(f"{observation.namespace}/{observation.name}: scaling failed: "
                    f"{api_error_message(error)}")
        raise ScaleAborted(ConditionUpdate(
            "Scaling", "False", SCALE_FAILED,
            f"cannot set the Deployment's replicas to {plan.replicas}: "
            f"{api_error_message(error)}",
        )) from None


async def _accept_count(
    observation: PoolObservation, state: PoolState, replicas: int, kube: KubeApi
) -> None:
    """Paused, the pool's count is the user's: a count set by hand becomes the one the
    operator keeps (REPLICAS_ANNOTATION, so resuming warns of no other writer) and the last
    decision (the history's, so that a pool set to zero sleeps once resumed, and one set
    above zero is awake), also for an operator restarted before the resume's first round."""
    deployment = observation.deployment or {}
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    written = annotations.get(REPLICAS_ANNOTATION)
    if state.scaling_history is None or written is None or written == str(replicas):
        return
    history = replace(state.scaling_history, replicas=replicas)
    patch = {"metadata": {"annotations": {
        HISTORY_ANNOTATION: json.dumps(history.to_json(), separators=(",", ":")),
        REPLICAS_ANNOTATION: str(replicas),
    }}}
    try:
        async with state.lock:
            patched = await kube.patch_deployment(observation.namespace, observation.name, patch)
            state.remember_deployment(patched)
    except ApiException as error:
        log.warning(f"{observation.namespace}/{observation.name}: cannot record the count set "
                    f"while paused: {api_error_message(error)}")
        return
    state.scaling_history = history


async def _withdraw_marks(
    observation: PoolObservation, names: Sequence[str], kube: KubeApi,
    message: str = "pods {names} are no longer removed and return to work",
) -> tuple[str, ...]:
    """Put pods that no longer leave back to work: clear the drain, then the deletion cost.
    Gives the pods withdrawn (the first failure stops the rest).

    In this order a failure half-way leaves the pod marked, so the next round tries again;
    the other order could leave a drained pod that nothing marks any more. Without the queue
    nothing is withdrawn, for the same reason.
    """
    if not names:
        return ()
    queue = observation.queue
    if queue is None:
        return ()
    patch = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: None}}}
    done: list[str] = []
    try:
        for name in names:
            await queue.clear_drain(name)
            await kube.patch_pod(observation.namespace, name, patch)
            done.append(name)
    except ApiException as error:
        log.warning(f"cannot withdraw the removal mark of a pod: {api_error_message(error)}")
    except REDIS_FAILURES as error:
        log.warning(f"cannot withdraw a drain request: {error}")
    if done:
        _post(observation, "DrainWithdrawn", message.format(names=", ".join(done)))
    return tuple(done)


async def _delete_orphans(
    observation: PoolObservation, names: Sequence[str], kube: KubeApi
) -> None:
    for name in names:
        try:
            await kube.delete_pod(observation.namespace, name)
        except ApiException as error:
            log.warning(f"cannot delete drained pod {name}: {api_error_message(error)}")
            continue
        _post(observation, "DrainedPodDeleted",
              f"deleted pod {name}: drained and its replica given back, but the ReplicaSet "
              "kept it")


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
    except REDIS_FAILURES as error:
        log.warning(f"cannot clear stale drain requests: {error}")


def not_scaling(refused: Problem | None) -> ConditionUpdate:
    """The Scaling condition of a round without a Deployment to scale: the reason the
    operator did not write one if it refused or failed to, else DeploymentMissing."""
    if refused is None:
        return ConditionUpdate("Scaling", "Unknown", "DeploymentMissing", "no Deployment to scale")
    return ConditionUpdate("Scaling", "False", refused.reason,
                           f"the pool does not scale: {refused.message}")


def _redis_problem(current: int, error: BaseException) -> ConditionUpdate:
    detail = sanitize(str(error) or type(error).__name__)
    return ConditionUpdate(
        "Scaling", "False", "QueueUnavailable",
        f"cannot read the workers' load to choose pods ({detail}): "
        f"holding {replicas_text(current)}",
    )


def _post(observation: PoolObservation, reason: str, message: str,
          warning: bool = False) -> None:
    text = sanitize(message)
    body = cast(kopf.Body, observation.pool)
    if warning:
        log.warning(f"{observation.namespace}/{observation.name}: {reason}: {text}")
        kopf.warn(body, reason=reason, message=text)
    else:
        log.info(f"{observation.namespace}/{observation.name}: {reason}: {text}")
        kopf.info(body, reason=reason, message=text)
