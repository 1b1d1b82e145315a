"""Evictions that wait for runs: the budget, the busy label, going nodes, leaving pods."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentpool_operator.deployment import POOL_LABEL, pool_labels
from agentpool_operator.disruption import (
    BUSY_LABEL,
    IDLE_BEFORE_UNGUARDED_SECONDS,
    GuardChanges,
    GuardedPod,
    budget_drift,
    desired_budget,
    going_nodes,
    guard_changes,
    node_is_going,
)
from agentpool_operator.scaling_plan import (
    PodSummary,
    PodWork,
    not_serving_pods,
    plan_scale,
    serving_replicas,
)

NOW = 1000.0
OWNER = {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool", "name": "nu",
         "uid": "u-1", "controller": True, "blockOwnerDeletion": True}


def budget() -> dict[str, Any]:
    return desired_budget("nu", "team-a", pool_labels("nu"), OWNER, POOL_LABEL)


# -- the budget ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.30", "1.36"])
def test_the_budget_is_a_valid_pod_disruption_budget(version: str) -> None:
    kubernetes_validate.validate(budget(), version, strict=True)


def test_the_budget_allows_no_eviction_of_the_pools_busy_pods() -> None:
    spec = budget()["spec"]
    assert spec["maxUnavailable"] == 0
    assert spec["selector"] == {"matchLabels": {POOL_LABEL: "nu", BUSY_LABEL: "true"}}
    assert "unhealthyPodEvictionPolicy" not in spec, (
        "AlwaysAllow would let a draining (unready) busy pod be evicted")
    assert budget()["metadata"]["ownerReferences"] == [OWNER]


def test_budget_drift_puts_back_only_what_the_pool_owns() -> None:
    actual = budget()
    actual["metadata"]["labels"]["team"] = "a"
    actual["metadata"]["resourceVersion"] = "7"
    actual["status"] = {"disruptionsAllowed": 0}
    assert budget_drift(budget(), actual) is None
    actual["spec"]["maxUnavailable"] = 1
    actual["spec"]["selector"] = {"matchLabels": {POOL_LABEL: "nu"}}
    del actual["metadata"]["labels"][POOL_LABEL]
    assert budget_drift(budget(), actual) == {
        "spec": {"maxUnavailable": 0, "selector": budget()["spec"]["selector"]},
        "metadata": {"labels": {POOL_LABEL: "nu"}},
    }


# -- going nodes -----------------------------------------------------------------------------


def node(unschedulable: bool = False, *taints: tuple[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"unschedulable": unschedulable} if unschedulable else {}
    if taints:
        spec["taints"] = [{"key": key, "effect": effect} for key, effect in taints]
    return {"metadata": {"name": "n"}, "spec": spec}


@pytest.mark.parametrize("body, going", [
    (node(), False),
    (node(True), True),
    (node(False, ("node.kubernetes.io/unschedulable", "NoSchedule")), True),
    (node(False, ("ToBeDeletedByClusterAutoscaler", "NoSchedule")), True),
    (node(False, ("DeletionCandidateOfClusterAutoscaler", "PreferNoSchedule")), False),
    (node(False, ("karpenter.sh/disrupted", "NoSchedule")), True),
    (node(False, ("karpenter.sh/disruption", "NoSchedule")), True),
    (node(False, ("node.kubernetes.io/not-ready", "NoExecute")), False),
    (node(False, ("dedicated", "NoSchedule")), False),
])
def test_a_node_is_going_when_cordoned_or_tainted_for_removal(
    body: dict[str, Any], going: bool
) -> None:
    assert node_is_going(body) is going


def test_pods_on_going_nodes_are_leaving() -> None:
    nodes = {"a": node(True), "b": node(), "gone": None}
    assert going_nodes(nodes) == {"a"}
    pods = [{"metadata": {"name": f"p-{n}"}, "spec": {"nodeName": n}} for n in ("a", "b")]
    pods.append({"metadata": {"name": "pending"}, "spec": {}})
    leaving = {p.name for p in map(PodSummary.from_body, pods, [going_nodes(nodes)] * 3)
               if p.leaving}
    assert leaving == {"p-a"}


def test_a_pod_summary_knows_its_node_and_its_label() -> None:
    body = {"metadata": {"name": "p", "labels": {BUSY_LABEL: "true"}},
            "spec": {"nodeName": "a"}, "status": {"phase": "Running"}}
    summary = PodSummary.from_body(body, {"a"})
    assert (summary.leaving, summary.guarded, summary.not_serving) == (True, True, True)
    assert not PodSummary.from_body(body, {"b"}).leaving
    finished = {**body, "status": {"phase": "Succeeded"}}
    assert not PodSummary.from_body(finished, {"a"}).leaving


# -- the busy label --------------------------------------------------------------------------


def test_a_busy_pod_is_guarded_at_once_and_an_idle_one_after_a_while() -> None:
    idle_since: dict[str, float] = {}
    pods = [GuardedPod("busy", False, 2), GuardedPod("idle", False, 0),
            GuardedPod("was-busy", True, 0)]
    assert guard_changes(pods, idle_since, NOW) == GuardChanges(guard=("busy",))
    later = NOW + IDLE_BEFORE_UNGUARDED_SECONDS - 0.1
    assert guard_changes(pods, idle_since, later) == GuardChanges(guard=("busy",))
    done = NOW + IDLE_BEFORE_UNGUARDED_SECONDS
    assert guard_changes(pods, idle_since, done) == GuardChanges(("busy",), ("was-busy",))
    assert idle_since == {}


def test_a_run_in_between_restarts_the_idle_time() -> None:
    idle_since: dict[str, float] = {}
    guard_changes([GuardedPod("p", True, 0)], idle_since, NOW)
    guard_changes([GuardedPod("p", True, 1)], idle_since, NOW + 5)
    assert guard_changes([GuardedPod("p", True, 0)], idle_since, NOW + 12) == GuardChanges()
    assert guard_changes([GuardedPod("p", True, 0)], idle_since, NOW + 22).unguard == ("p",)


def test_a_leaving_pod_stays_guarded_while_idle() -> None:
    idle_since: dict[str, float] = {}
    leaving = [GuardedPod("p", False, 0, leaving=True)]
    assert guard_changes(leaving, idle_since, NOW).guard == ("p",)
    kept = [GuardedPod("p", True, 0, leaving=True)]
    assert guard_changes(kept, idle_since, NOW + 1000) == GuardChanges()


def test_turned_off_every_label_goes_at_once_and_gone_pods_are_forgotten() -> None:
    idle_since = {"gone": NOW - 5}
    pods = [GuardedPod("busy", True, 3), GuardedPod("new", False, 1)]
    assert guard_changes(pods, idle_since, NOW, enabled=False) == GuardChanges(unguard=("busy",))
    assert idle_since == {}


# -- leaving pods in the scale plan ----------------------------------------------------------


def summaries(*names: str, leaving: tuple[str, ...] = (), marked: tuple[str, ...] = (),
              released: tuple[str, ...] = (), unready: tuple[str, ...] = ()
              ) -> list[PodSummary]:
    return [
        PodSummary(n, ready=n not in unready, marked=n in marked or n in released,
                   released=n in released, leaving=n in leaving)
        for n in names
    ]


def test_leaving_pods_are_not_capacity_and_new_pods_replace_them() -> None:
    pods = summaries("a", "b", "c", leaving=("a", "b"))
    assert serving_replicas(pods, 3, ()) == 1
    plan = plan_scale(pods, 3, (), 3, {"a": PodWork(2)}, NOW)
    assert (plan.drain, plan.release, plan.start, plan.replicas) == (("a",), ("b",), 2, 5)


def test_a_leaving_pod_gives_its_replica_back_once_its_runs_end() -> None:
    marked = summaries("a", "b", "c", "d", "e", leaving=("a", "b"), marked=("a",),
                       released=("b",), unready=("a", "b"))
    plan = plan_scale(marked, 5, (), 3, {"a": PodWork(1)}, NOW)
    assert (plan.give_back, plan.replicas, plan.start) == (("b",), 4, 0)
    done = summaries("a", "b", "c", "d", "e", leaving=("a", "b"), released=("a", "b"),
                     unready=("a", "b"))
    assert plan_scale(done, 4, ("b",), 3, {}, NOW).replicas == 3


def test_a_leaving_pod_is_never_taken_back_nor_kept_as_a_spare() -> None:
    pods = summaries("a", "b", leaving=("a",), marked=("a",), unready=("a",))
    plan = plan_scale(pods, 2, (), 2, {"a": PodWork(1), "b": PodWork(4)}, NOW)
    assert (plan.withdraw, plan.start, plan.replicas) == ((), 1, 3)
    idle = summaries("a", "b", leaving=("a",), marked=("a",), unready=("a",))
    plan = plan_scale(idle, 2, (), 1, {"b": PodWork(1)}, NOW, keep=2)
    assert plan.release == ("a",), "a spare must not stay on a node that is going"


def test_a_marked_pod_whose_node_comes_back_can_be_taken_back() -> None:
    pods = summaries("a", "b", marked=("a",), unready=("a",))
    plan = plan_scale(pods, 2, (), 2, {"a": PodWork(1), "b": PodWork(4)}, NOW)
    assert (plan.withdraw, plan.start) == (("a",), 0)


@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["", "m", "r"]), st.booleans(),
                          st.booleans()), max_size=8),
       st.integers(0, 10), st.integers(0, 10), st.integers(0, 4))
def test_leaving_plans_keep_the_invariants(spec: list[tuple[int, str, bool, bool]],
                                           replicas: int, target: int, keep: int) -> None:
    pods = [
        PodSummary(f"p{i}", ready=ready, marked=bool(mark), released=mark == "r",
                   leaving=leaving)
        for i, (_, mark, ready, leaving) in enumerate(spec)
    ]
    busy = {f"p{i}": PodWork(n) for i, (n, *_) in enumerate(spec)}
    plan = plan_scale(pods, replicas, (), target, busy, NOW, keep=target + keep)
    leaving = {p.name for p in pods if p.leaving}
    assert not leaving & set(plan.withdraw)
    assert all(busy[n].in_flight == 0 for n in (*plan.release, *plan.give_back))
    unmarked_busy = {p.name for p in pods if p.leaving and not p.marked and busy[p.name].in_flight}
    assert unmarked_busy <= set(plan.drain)
    idle_leavers = {p.name for p in pods if p.leaving and not busy[p.name].in_flight
                    and not p.released}
    assert idle_leavers <= set(plan.release)
    marked = {p.name for p in pods if p.marked} | set(plan.drain) | set(plan.release)
    after = [PodSummary(p.name, ready=p.ready, marked=p.name in marked and
                        p.name not in plan.withdraw, leaving=p.leaving) for p in pods]
    assert serving_replicas(after, plan.replicas, plan.given_back) == target
    if plan.start:
        assert all(p.leaving for p in not_serving_pods(after, plan.given_back))
