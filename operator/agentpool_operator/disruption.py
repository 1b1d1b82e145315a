"""Evictions wait for runs: which pods are guarded and which nodes are going, as pure decisions.

An eviction (`kubectl drain`, a node upgrade, an autoscaler emptying a node) would give a busy
worker only drainSeconds. Each pool has a PodDisruptionBudget with `maxUnavailable: 0` over its
pods that carry the label ``agentpool.dev/busy: "true"``, so the API server refuses to evict
them (429) while letting idle pods go. The operator keeps the label true to the workers'
heartbeats: on as soon as a pod holds a run, off once it has been idle for a while (a pod of
short tasks is not relabelled every round).

A refused eviction alone would block a drain for as long as the pod keeps taking tasks. So the
pods of a node that is going (cordoned, or tainted by the Cluster Autoscaler or Karpenter)
leave the way a scale-down's pods leave: marked, asked to drain, never taken back, their
replica given back once their runs end (new pods start elsewhere as the load needs). They stay
guarded until then, so that the eviction, which would make the ReplicaSet start a second
replacement, does not race the operator; once the replica is gone the ReplicaSet deletes the
pod and the drain finds it gone.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

BUSY_LABEL = "agentpool.dev/busy"
BUSY_VALUE = "true"
IDLE_BEFORE_UNGUARDED_SECONDS = 10.0
"""How long a pod must stay idle before its label goes: short tasks would flip it each round."""

GOING_TAINTS = frozenset({
    "node.kubernetes.io/unschedulable",
    "ToBeDeletedByClusterAutoscaler",
    "karpenter.sh/disrupted",
    "karpenter.sh/disruption",
})
"""Taints that announce a node's drain: kubectl cordon's, the Cluster Autoscaler's, Karpenter's
(v1, and v0.3x's `disruption=disrupting`). The Cluster Autoscaler's soft
`DeletionCandidateOfClusterAutoscaler` (PreferNoSchedule) only marks a node it may remove."""


def node_is_going(node: Mapping[str, Any]) -> bool:
    """Whether the node is being emptied: cordoned, or tainted for removal."""
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return True
    taints = spec.get("taints") or []
    return any(
        taint.get("key") in GOING_TAINTS and taint.get("effect") in ("NoSchedule", "NoExecute")
        for taint in taints
    )


def desired_budget(pool_name: str, namespace: str, labels: Mapping[str, str],
                   owner_reference: Mapping[str, Any] | None, pool_label: str
                   ) -> dict[str, Any]:
    """The pool's PodDisruptionBudget: no voluntary eviction of a pod that holds runs.

    With `maxUnavailable: 0` the budget never allows a disruption of the pods it selects, ready
    or not (the default unhealthy-pod policy only lets an unready pod go while the budget is
    healthy, which with 0 allowed and any selected pod unready it is not): a draining worker,
    unready but still running, keeps its runs.
    """
    metadata: dict[str, Any] = {"name": pool_name, "namespace": namespace, "labels": dict(labels)}
    if owner_reference is not None:
        metadata["ownerReferences"] = [dict(owner_reference)]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata,
        "spec": {
            "maxUnavailable": 0,
            "selector": {"matchLabels": {pool_label: pool_name, BUSY_LABEL: BUSY_VALUE}},
        },
    }


def budget_drift(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch putting back the budget's spec and labels, or None when they match."""
    patch: dict[str, Any] = {}
    spec = actual.get("spec") or {}
    wanted = desired["spec"]
    changed = {key: value for key, value in wanted.items() if spec.get(key) != value}
    if changed:
        patch["spec"] = changed
    labels = (actual.get("metadata") or {}).get("labels") or {}
    missing = {k: v for k, v in desired["metadata"]["labels"].items() if labels.get(k) != v}
    if missing:
        patch["metadata"] = {"labels": missing}
    return patch or None


@dataclass(frozen=True)
class GuardedPod:
    """What the guard needs to know about one pod."""

    name: str
    guarded: bool
    """Carries the busy label now."""
    in_flight: int
    leaving: bool = False
    """On a node that is going, its replica not given back yet: kept guarded until it is."""


@dataclass(frozen=True)
class GuardChanges:
    guard: tuple[str, ...] = ()
    unguard: tuple[str, ...] = ()


def guard_changes(pods: Sequence[GuardedPod], idle_since: MutableMapping[str, float],
                  now: float, enabled: bool = True) -> GuardChanges:
    """Which pods get the busy label and which lose it.

    `idle_since` (kept by the caller between rounds, updated here) records when each guarded
    pod was first seen idle; a pod loses the label once it has been idle
    IDLE_BEFORE_UNGUARDED_SECONDS. Turned off, every label goes at once.
    """
    guard: list[str] = []
    unguard: list[str] = []
    seen = {pod.name for pod in pods}
    for name in [n for n in idle_since if n not in seen]:
        del idle_since[name]
    for pod in pods:
        wanted = enabled and (pod.in_flight > 0 or pod.leaving)
        if wanted:
            idle_since.pop(pod.name, None)
            if not pod.guarded:
                guard.append(pod.name)
            continue
        if not pod.guarded:
            idle_since.pop(pod.name, None)
            continue
        since = idle_since.setdefault(pod.name, now)
        if not enabled or now - since >= IDLE_BEFORE_UNGUARDED_SECONDS:
            unguard.append(pod.name)
            del idle_since[pod.name]
    return GuardChanges(tuple(guard), tuple(unguard))


def going_nodes(nodes: Mapping[str, Mapping[str, Any] | None]) -> frozenset[str]:
    """The names of the nodes being emptied, from their bodies (None: node not found)."""
    return frozenset(name for name, body in nodes.items() if body and node_is_going(body))


def nodes_of(pods: Sequence[Mapping[str, Any]]) -> frozenset[str]:
    return frozenset(
        str(node) for pod in pods if (node := (pod.get("spec") or {}).get("nodeName"))
    )
