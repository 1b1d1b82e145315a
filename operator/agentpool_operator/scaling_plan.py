"""Scaling decisions for one pool, as pure functions of what a round observed.

The scaling policy (`agentpool.scaling.policy`) sees the pool's *serving* replicas (the
Deployment's count less the pods that drain) and the tasks queued or running on serving pods:
a draining pod is neither capacity nor a pod to remove again, and the runs of a pod that is
terminating (a rollout's, finishing them within drainSeconds) hold no slot of the pool.
`plan_scale` turns the policy's target into marks on pods: which to ask to drain, which to
release once their runs ended, which drains to withdraw when the load comes back, and how many
replicas the Deployment keeps (see `scaling_actions`, which applies the plan); `plan_paused`
the drains a paused pool withdraws.
`scaling_condition` words the `Scaling` condition, `zero_ready` the `Ready` condition of a
pool that wants no serving pod; `draining_fields` the status's count of pods that finish their
runs before they go; `replicas_changed_outside` tells a replica count someone else wrote;
`sleep_unrecorded` whether the history must be written though the count stays.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from agentpool.models import parse_rfc3339
from agentpool.scaling.policy import (
    TIMES,
    Decision,
    QueueLoad,
    ScalingHistory,
    ScalingPolicy,
)
from agentpool.scaling.scaledown import (
    CHOSEN_COST,
    DELETION_COST_ANNOTATION,
    RELEASED_COST,
    PodLoad,
    plan_drains,
)

from .deployment import deployment_pod
from .disruption import BUSY_LABEL, BUSY_VALUE
from .kube import FIELD_MANAGER
from .status import ConditionUpdate, rfc3339

HISTORY_ANNOTATION = "agentpool.dev/scaling-history"
"""On the Deployment: the scaling policy's history, so a restarted operator keeps its times."""
RELEASED_ANNOTATION = "agentpool.dev/replicas-given-back"
"""On the Deployment: the drained pods whose replica the last replica count already left out."""
REPLICAS_ANNOTATION = "agentpool.dev/replicas"
"""On the Deployment: the replica count the operator last wrote (or, paused, found: a count
set by hand while paused is the user's), so that one written by someone else (kubectl scale,
an HPA) is told apart."""
OWN_FIELD_MANAGERS = frozenset({FIELD_MANAGER, "OpenAPI-Generator"})
"""The field managers of the operator's own writes (an older operator named none, so the API
server took the Kubernetes client's user agent)."""
STALE_DRAIN_SECONDS = 30.0
"""A drain request of a pod that no longer exists is cleared once it is this old."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodSummary:
    """What scale-down needs to know about one pod of the pool."""

    name: str
    ready: bool = True
    gone: bool = False
    """Being deleted, or finished (Succeeded/Failed): not a live replica any more."""
    marked: bool = False
    """Carries a deletion cost this module sets on the pods it chose."""
    released: bool = False
    """Its mark says its runs ended and its replica may go."""
    leaving: bool = False
    """On a node being emptied (see `disruption`): it leaves like a chosen pod, for good."""
    guarded: bool = False
    """Carries the busy label that the pool's PodDisruptionBudget protects."""
    stopping_since: float | None = None
    """Deleted (a rollout, a deletion) while it still runs: when the deletion was asked (its
    worker finishes its runs within drainSeconds)."""
    created: float | None = None
    """Its creationTimestamp."""

    @property
    def not_serving(self) -> bool:
        """Marked for removal, or leaving with its node."""
        return self.marked or self.leaving

    @classmethod
    def from_body(cls, pod: Mapping[str, Any], going: Collection[str] = ()) -> PodSummary:
        """`going`: the names of the nodes being emptied."""
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        gone = bool(meta.get("deletionTimestamp")) or status.get("phase") in (
            "Succeeded", "Failed",
        )
        cost = (meta.get("annotations") or {}).get(DELETION_COST_ANNOTATION)
        deadline = parse_rfc3339(meta.get("deletionTimestamp"))
        stopping_since = None
        if deadline is not None and status.get("phase") not in ("Succeeded", "Failed"):
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            stopping_since = deadline.timestamp() - grace
        created = parse_rfc3339(meta.get("creationTimestamp"))
        return cls(
            name=str(meta.get("name", "")),
            ready=ready,
            gone=gone,
            marked=cost in (CHOSEN_COST, RELEASED_COST),
            released=cost == RELEASED_COST,
            leaving=not gone and (pod.get("spec") or {}).get("nodeName") in going,
            guarded=(meta.get("labels") or {}).get(BUSY_LABEL) == BUSY_VALUE,
            stopping_since=stopping_since,
            created=created.timestamp() if created is not None else None,
        )


@dataclass(frozen=True)
class PodWork:
    """A pod's runs, as its workers' heartbeats report them."""

    in_flight: int = 0
    runs_since: tuple[float, ...] = ()


def not_serving_pods(pods: Sequence[PodSummary], given_back: Collection[str]) -> list[PodSummary]:
    """Marked or leaving live pods that still hold a replica of the Deployment."""
    return [p for p in pods if p.not_serving and not p.gone and p.name not in given_back]


def serving_replicas(pods: Sequence[PodSummary], replicas: int,
                     given_back: Collection[str], lost: Collection[str] = ()) -> int:
    """The replicas that take work: the Deployment's count less the marked pods holding one,
    and less the `lost` replicas (see `lost_replicas`) given back this round."""
    return max(0, replicas - len(not_serving_pods(pods, given_back)) - len(lost))


def lost_replicas(pods: Sequence[PodSummary], given_back: Collection[str],
                  work: Mapping[str, PodWork] | None) -> tuple[str, ...]:
    """Marked pods deleted by someone else (by hand, a rollout, an eviction) before their
    replica was given back, when their replicas may be given back now.

    The ReplicaSet replaces such a pod with a new one, which a scale-down would only drain
    and remove again: giving the replica back removes the replacement instead. Only when no
    pod with a run can go in its place: the ReplicaSet removes unready pods first, then the
    lowest deletion cost, so every live pod that is unready or marked must be idle, and the
    replacements must be there (as many unready unmarked pods created since the deletion as
    lost pods). None without the pods' work (`work` None), nor for a pod deleted and gone
    from the listing before a round saw it (nothing tells it was marked)."""
    if work is None:
        return ()
    deleted = [p for p in pods if p.gone and p.marked and p.name not in given_back
               and p.stopping_since is not None]
    live = [p for p in pods if not p.gone]
    if not deleted or any(work.get(p.name, PodWork()).in_flight > 0
                          for p in live if not p.ready or p.marked):
        return ()
    since = math.floor(min(p.stopping_since or 0.0 for p in deleted))
    replacements = replacement_pods(pods, since)
    return tuple(sorted(p.name for p in deleted)) if len(replacements) >= len(deleted) else ()


def replacement_pods(pods: Sequence[PodSummary], since: float) -> list[str]:
    """Live unmarked pods not ready yet, created at `since` or later, oldest first."""
    new = [p for p in pods if not p.gone and not p.ready and not p.marked
           and p.created is not None and p.created >= since]
    return [p.name for p in sorted(new, key=lambda p: (p.created or 0.0, p.name))]


def serving_load(load: QueueLoad, pods: Sequence[PodSummary], work: Mapping[str, PodWork],
                 given_back: Collection[str], now: float | None = None) -> QueueLoad:
    """The queue as the policy must see it: the runs of draining pods and of pods that are
    stopping (a rollout's old pods finish their runs while they terminate) need no capacity;
    the ages of the serving pods' runs (at `now`) tell how soon they free a slot, and the
    runs of pods that do not serve are counted (they are in the limits' waits).
    The runs of pods no longer listed (deleted, their leases not yet run out) give no ages:
    they serve nothing, and their ages only grow."""
    if not load.figures_ok:
        return load
    not_serving = ({p.name for p in not_serving_pods(pods, given_back)}
                   | {p.name for p in pods if p.gone})
    elsewhere = sum(work.get(name, PodWork()).in_flight for name in not_serving)
    serving = {p.name for p in pods} - not_serving
    ages = () if now is None else tuple(
        max(0.0, now - since)
        for name, w in sorted(work.items()) if name in serving for since in w.runs_since
    )
    return replace(load, in_flight=max(0, load.in_flight - elsewhere), run_ages=ages,
                   draining_runs=elsewhere)


@dataclass(frozen=True)
class ScalePlan:
    replicas: int
    """The Deployment's replica count after this round."""
    drain: tuple[str, ...] = ()
    """Marked with the chosen cost and asked to drain: chosen now and busy, leaving with
    their node, or released but busy again (see `plan_scale`)."""
    release: tuple[str, ...] = ()
    """No run left (chosen now idle, or drained): marked released, asked to drain."""
    withdraw: tuple[str, ...] = ()
    """Marked before, back to work."""
    give_back: tuple[str, ...] = ()
    """Released, unready: their replicas are taken off `replicas` now."""
    lost: tuple[str, ...] = ()
    """Marked, deleted by someone else before their replica was given back: their replicas
    are taken off `replicas` now (see `lost_replicas`)."""
    given_back: tuple[str, ...] = ()
    """Every listed pod (live, or terminating) whose replica was given back, for the
    Deployment's annotation: a terminating one stays named, so that it never passes for a
    deleted pod that still holds its replica (see `lost_replicas`)."""
    start: int = 0
    """New pods this round asks for (the pods started in place of `lost` ones that stay are
    not new: see `replacements_kept`)."""
    replacements_kept: int = 0
    """Pods the ReplicaSet started in place of `lost` ones that stay: a scale-up in the same
    round takes them, so the count gives back fewer replicas than pods were lost."""
    delete: tuple[str, ...] = ()
    """Given back, yet the ReplicaSet kept them (it removed another pod, or the count rose
    again): drained pods that serve nothing, deleted so that it replaces them."""

    def writes_deployment(self, replicas: int) -> bool:
        """Whether the Deployment (at `replicas`) must be written: its count changes, or a
        replica is given back, which must be named even when a new pod asked for in the
        same round leaves the count as it was."""
        return self.replicas != replicas or bool(self.give_back) or bool(self.lost)


DRAIN_READY_TIMEOUT_SECONDS = 60.0
"""A released pod that still reads Ready this long after its drain request gives back its
replica anyway (a worker image without the readiness probe, say), once no other pod is unready
(the ReplicaSet would remove that one first)."""


def plan_scale(
    pods: Sequence[PodSummary],
    replicas: int,
    given_back: Collection[str],
    target: int,
    work: Mapping[str, PodWork] | None,
    now: float,
    drains: Mapping[str, float] | None = None,
    keep: int | None = None,
) -> ScalePlan:
    """Move the Deployment from `replicas` towards `target` serving replicas, keeping up to
    `keep` (default `target`) live: drained pods without runs wait to be taken back.

    Only live unmarked pods are chosen, and no more of them than leave `target` (pods the
    ReplicaSet has not created yet are removed by just not creating them; pods beyond the
    count, a rollout's surge, are not ours to choose). `work` None (the queue is unreadable)
    counts every pod as busy and takes no drain back (its request could not be cleared): new
    pods start instead, and nothing is released on missing data. A released pod gives its
    replica back once it is unready and no unmarked pod is (so that it is the ReplicaSet's
    first choice), or once its drain is DRAIN_READY_TIMEOUT_SECONDS old (a pod that never
    turns ready must not hold it forever; should the ReplicaSet then remove another pod, the
    released one is deleted, see `ScalePlan.delete`). A released pod still Ready goes only
    while no other live pod is unready: the ReplicaSet removes unready pods before ready ones
    whatever their cost, and the busy pods chosen for removal are unready while they drain.
    The replicas of marked pods deleted by someone else go too (`lost_replicas`); a scale-up
    in the same round keeps the pods started in their place as the new pods it asks for.

    A released pod that holds a run again (it claimed one between its mark and its drain
    request) goes back to the chosen cost, and the round that moves it gives no replica back:
    the next round does, once the ReplicaSet sees the new cost, so that it removes an idle
    released pod and not the busy one.
    """
    requested = drains or {}
    known = work is not None
    live = [p for p in pods if not p.gone]
    names = {p.name for p in pods if p.marked}
    given = tuple(sorted(n for n in given_back if n in names))
    lost = lost_replicas(pods, given, work)
    if work is None:
        work = {p.name: PodWork(in_flight=1) for p in pods}
    out = not_serving_pods(pods, given)
    stopped = [p.stopping_since or 0.0 for p in pods if p.name in lost]
    replaced = set(replacement_pods(pods, math.floor(min(stopped)))[:len(lost)] if lost else ())
    unmarked = [p for p in live if not p.not_serving and p.name not in replaced]
    serving = serving_replicas(pods, replicas, given, lost)
    if target < serving:
        live_target = len(unmarked) - max(0, min(serving - target, len(unmarked) - target))
    else:
        live_target = len(unmarked) + target - serving

    def load(p: PodSummary) -> PodLoad:
        w = work.get(p.name, PodWork())
        ages = tuple(max(0.0, now - since) for since in w.runs_since)
        return PodLoad(p.name, w.in_flight, p.ready, draining=p.not_serving, run_ages=ages,
                       leaving=p.leaving)

    live_keep = live_target + max(0, (target if keep is None else keep) - target)
    plan = plan_drains([load(p) for p in unmarked + out], live_target, live_keep,
                       may_withdraw=known)
    by_name = {p.name: p for p in live}
    chosen = set(plan.drain)
    idle = set(plan.release)
    release = [n for n in plan.drain if n in idle]
    release += [n for n in plan.release if n not in chosen and not by_name[n].released]
    leavers = [p.name for p in out if p.leaving and not p.marked and p.name not in idle]
    busy_again = [
        p.name for p in out if known and p.released and p.name not in plan.withdraw
        and work.get(p.name, PodWork()).in_flight > 0
    ]
    starting = any(not p.ready for p in unmarked)

    def may_go(name: str) -> bool:
        waited = now - requested.get(name, now) >= DRAIN_READY_TIMEOUT_SECONDS
        return waited or (not by_name[name].ready and not starting)

    give_back = [
        n for n in plan.release
        if n not in chosen and by_name[n].released and may_go(n) and not busy_again
    ]
    if any(not p.ready for p in live if p.name not in give_back):
        give_back = [n for n in give_back if not by_name[n].ready]
    kept = len(out) - len(plan.withdraw) - len(give_back) + len(plan.drain)
    orphans = tuple(n for n in given if n in by_name) if len(live) <= replicas else ()
    kept_replacements = min(len(replaced), plan.start)
    return ScalePlan(
        replicas=target + kept,
        drain=(*(n for n in plan.drain if n not in idle), *leavers, *busy_again),
        release=tuple(release),
        withdraw=plan.withdraw,
        give_back=tuple(give_back),
        lost=lost,
        given_back=tuple(sorted({*given, *give_back, *lost})),
        start=plan.start - kept_replacements,
        replacements_kept=kept_replacements,
        delete=orphans,
    )


def plan_paused(pods: Sequence[PodSummary], replicas: int, given_back: Collection[str],
                nodes_known: bool = True) -> ScalePlan:
    """A paused pool keeps its `replicas` and asks no pod to drain; the drains its scale-downs
    asked for are withdrawn as a scale-up withdraws them, so that every pod the Deployment
    counts serves (a pool is paused to freeze its size, during an incident say, not to run
    short of it). A scale-down chooses afresh after the pause.

    Drains that stay: the pods leaving with their node (its drain waits for them), the pods
    whose replica was given back (the count no longer holds them: they must go, not serve)
    and the pods being deleted. When some node could not be read (`nodes_known` False) no
    drain is withdrawn: a pod on it may be leaving with it."""
    live = [p for p in pods if not p.gone]
    marked = {p.name for p in live if p.marked}
    given = tuple(sorted(n for n in given_back if n in marked))
    withdraw = tuple(
        p.name for p in live if p.marked and not p.leaving and p.name not in given
    ) if nodes_known else ()
    return ScalePlan(replicas=replicas, withdraw=withdraw, given_back=given)


def stale_drains(
    requests: Mapping[str, float], pods: Collection[str], pool: str, now: float,
    grace: float = STALE_DRAIN_SECONDS,
) -> list[str]:
    """Drain requests (by pod or by `pod:instance`) for this pool's pods that no longer exist.

    Only names a Deployment gives its pods (`<pool>-<hash>-<suffix>`) are considered, so the
    requests of another pool sharing the queue are left alone; a grace period leaves requests
    for pods created after `pods` was listed.
    """
    stale = []
    for key, at in requests.items():
        pod = key.rpartition(":")[0] or key
        if deployment_pod(pod, pool) and pod not in pods and now - at >= grace:
            stale.append(key)
    return sorted(stale)


def queue_load(figures: Any) -> QueueLoad:
    if figures is None:
        return QueueLoad.unavailable()
    return QueueLoad(queued=figures.queued - figures.capped, in_flight=figures.in_flight,
                     capped=figures.capped)


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


def sleep_unrecorded(annotation: str | None, history: ScalingHistory) -> bool:
    """Whether the history annotation (`annotation`) and `history` disagree on whether the last
    decision was zero. A restarted operator tells an asleep pool by it, so a round writes it
    when that changes, even with the count as it was (a decision of zero only releases pods
    at first); other changes of the decision wait for a change of the count."""
    try:
        data = json.loads(annotation) if annotation else {}
    except ValueError:
        data = {}
    recorded = data.get("replicas") if isinstance(data, dict) else None
    return (recorded == 0) != (history.replicas == 0)


def scaling_condition(
    policy: ScalingPolicy, load: QueueLoad, decision: Decision
) -> ConditionUpdate:
    """The Scaling condition after `decision` was applied (saying so when tasks parked for
    their tenant's cap on runs at once were left out of the backlog)."""
    update = _scaling_condition(policy, load, decision)
    if load.capped <= 0:
        return update
    tasks = "1 task waits" if load.capped == 1 else f"{load.capped} tasks wait"
    return replace(update, message=f"{update.message}; {tasks} for their tenant's cap on "
                                   "runs at once (not counted)")


def _scaling_condition(
    policy: ScalingPolicy, load: QueueLoad, decision: Decision
) -> ConditionUpdate:
    current, replicas = decision.current, decision.replicas
    if decision.limited is not None:
        limited = decision.limited
        if replicas < current:
            action = f"scaling down {current} → {replicas}"
        elif replicas > current:
            action = f"scaling up {current} → {replicas}"
        else:
            action = f"holding {replicas_text(current)}"
        return ConditionUpdate(
            "Scaling", "True", "RateLimited",
            f"rate limit {limited.limit} holds the pool: its runs wait for its grants or "
            f"slots, so more pods would only wait longer; {replicas_text(limited.cap)} can "
            f"feed it (the backlog asks for {limited.need}); {action}",
        )
    if replicas > current:
        return ConditionUpdate("Scaling", "True", "ScaledUp", decision.reason)
    if replicas < current:
        return ConditionUpdate("Scaling", "True", "ScaledDown", decision.reason)
    if not load.figures_ok:
        return ConditionUpdate(
            "Scaling", "False", "QueueUnavailable",
            f"queue figures unavailable: holding {replicas_text(current)}",
        )
    if policy.fixed:
        return ConditionUpdate(
            "Scaling", "False", "FixedSize",
            f"minReplicas = maxReplicas = {policy.min_replicas}: a fixed-size pool",
        )
    tpr = policy.tasks_per_replica
    raw = math.ceil(load.backlog / tpr)
    need = decision.need if decision.need is not None else policy.clamp(raw)
    if raw > policy.max_replicas and current == policy.max_replicas:
        return ConditionUpdate(
            "Scaling", "True", "AtMaximum",
            f"the backlog needs more than maxReplicas ({policy.max_replicas}) {TIMES} {tpr} tasks",
        )
    if decision.asleep:
        return ConditionUpdate(
            "Scaling", "True", "Stable",
            f"scaled to zero; wakes when more than {policy.activation_depth} tasks are queued",
        )
    if need > current:
        return ConditionUpdate(
            "Scaling", "True", "CoolingDown",
            f"the backlog needs {replicas_text(need)}; the scale-up waits for its cooldown "
            f"({policy.scale_up_cooldown_seconds:g}s)",
        )
    if need < current:
        return ConditionUpdate(
            "Scaling", "True", "Stabilizing",
            f"the backlog needs {replicas_text(need)} of {current}; the scale-down waits for the "
            f"{policy.scale_down_cooldown_seconds:g}s stabilisation window",
        )
    if policy.clamp(raw) > current:
        return ConditionUpdate(
            "Scaling", "True", "Stable",
            f"{replicas_text(current)} {TIMES} {tpr} tasks fit the backlog once the runs about to "
            "end take the queued tasks, sooner than a new pod could",
        )
    return ConditionUpdate(
        "Scaling", "True", "Stable", f"{replicas_text(current)} {TIMES} {tpr} tasks fit the backlog"
    )


def replicas_text(count: int) -> str:
    return f"{count} replica" if count == 1 else f"{count} replicas"


def zero_ready(policy: ScalingPolicy, draining: int | None) -> ConditionUpdate:
    """Ready of a pool whose decision wants no serving pod: its pods that still finish their
    runs (`draining`, None when not known) are unready on purpose, not missing workers."""
    depth = policy.activation_depth
    wakes = f"more than {depth} tasks are queued" if depth else "tasks arrive"
    finishing = ""
    if draining:
        finishing = ("; 1 pod finishes its runs before it goes" if draining == 1
                     else f"; {draining} pods finish their runs before they go")
    return ConditionUpdate("Ready", "True", "ScaledToZero",
                           f"no worker wanted{finishing}; the pool wakes when {wakes}")


def draining_fields(pods: Sequence[PodSummary], plan: ScalePlan,
                    drains: Mapping[str, float] | None,
                    work: Mapping[str, PodWork]) -> dict[str, Any]:
    """status.drainingReplicas and drainingSince: the pods that claim nothing new and finish
    their runs before they go (chosen by a scale-down, on a node being emptied, or stopped by
    a rollout or a deletion while they hold runs), and when the first was asked to. `drains`
    None (the queue could not be read): none, so that the status keeps the last ones."""
    if drains is None:
        return {}
    gone = {*plan.withdraw, *plan.given_back}
    draining = [p.name for p in pods if p.marked and not p.gone and p.name not in gone]
    draining += [n for n in dict.fromkeys((*plan.drain, *plan.release)) if n not in draining]
    times = [drains[n] for n in draining if n in drains]
    stopping = {p.name: p.stopping_since for p in pods if p.stopping_since is not None
                and work.get(p.name, PodWork()).in_flight > 0 and p.name not in draining}
    draining += list(stopping)
    times += stopping.values()
    since = rfc3339(datetime.fromtimestamp(min(times), UTC)) if times else None
    return {"drainingReplicas": len(draining), "drainingSince": since}


@dataclass(frozen=True)
class OutsideChange:
    """A replica count someone else wrote over the operator's."""

    replicas: int
    """The Deployment's count now."""
    written: int
    """The count the operator last wrote."""
    by: str | None
    """The field manager that wrote it, when the Deployment's managedFields tell."""

    def message(self, decided: int) -> str:
        """`decided`: the count the operator writes now; the other writer's while a
        scale-down waits for its window."""
        by = f" by {self.by}" if self.by else ""
        if decided == self.replicas:
            action = f"keeps {decided} for now and sizes the pool by its queue from here"
        else:
            action = f"sizes the pool itself and sets {decided}"
        return (f"the Deployment's replicas were changed to {self.replicas}{by}, outside the "
                f"operator (it had set {self.written}): the operator {action}. Remove the "
                "other writer (an HPA, a KEDA ScaledObject), or set spec.paused to size the "
                "pool by hand")


def replicas_changed_outside(deployment: Mapping[str, Any]) -> OutsideChange | None:
    """Whether the Deployment's spec.replicas differs from the count the operator last wrote
    (REPLICAS_ANNOTATION; None when it wrote none yet), and by whom: the latest field manager
    owning spec.replicas that is not the operator's own.

    None too when the latest owner is one of the operator's own (OWN_FIELD_MANAGERS): an
    operator that kept no annotation wrote it (a downgrade to an older version, and back)."""
    meta = deployment.get("metadata") or {}
    written = (meta.get("annotations") or {}).get(REPLICAS_ANNOTATION)
    replicas = (deployment.get("spec") or {}).get("replicas", 1)
    if written is None or not str(written).isdigit() or not isinstance(replicas, int):
        return None
    if int(written) == replicas:
        return None
    writers: list[tuple[float, str]] = []
    own: list[tuple[float, str]] = []
    for entry in meta.get("managedFields") or ():
        if not isinstance(entry, Mapping):
            continue
        fields = entry.get("fieldsV1") or {}
        spec = fields.get("f:spec") if isinstance(fields, Mapping) else None
        manager = entry.get("manager")
        if isinstance(spec, Mapping) and "f:replicas" in spec and isinstance(manager, str):
            at = parse_rfc3339(entry.get("time"))
            written_at = at.timestamp() if at is not None else 0.0
            (own if manager in OWN_FIELD_MANAGERS else writers).append((written_at, manager))
    if own and (not writers or max(own)[0] >= max(writers)[0]):
        return None
    return OutsideChange(replicas, int(written), max(writers)[1] if writers else None)
