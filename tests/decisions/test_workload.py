from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentpool_operator.settings import OperatorSettings
from agentpool_operator.status import Problem
from agentpool_operator.workload import (
    PODS_FAILING,
    PODS_NOT_CREATED,
    PODS_UNSCHEDULABLE,
    ROLLOUT_STALLED,
    UNSCHEDULABLE_GRACE_SECONDS,
    workload_problems,
)

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
QUOTA = ('pods "demo-7c9f-abcde" is forbidden: exceeded quota: agents, requested: cpu=1, '
         'used: cpu=8, limited: cpu=8')


def deployment(*conditions: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"replicas": 4}, "status": {"replicas": 2, "conditions": list(conditions)}}


def pod(name: str, *containers: dict[str, Any], phase: str = "Running",
        conditions: list[dict[str, Any]] | None = None, deleting: bool = False,
        init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-05T11:59:00Z"
    status: dict[str, Any] = {"phase": phase, "containerStatuses": list(containers),
                              "conditions": conditions or []}
    if init:
        status["initContainerStatuses"] = init
    return {"metadata": metadata, "status": status}


def waiting(reason: str, message: str = "", **extra: Any) -> dict[str, Any]:
    return {"name": "worker", "state": {"waiting": {"reason": reason, "message": message}},
            **extra}


def running() -> dict[str, Any]:
    return {"name": "worker", "state": {"running": {"startedAt": "2026-12-05T11:00:00Z"}}}


def stamp(ago: float) -> str:
    return (NOW - timedelta(seconds=ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def unschedulable(ago: float) -> list[dict[str, Any]]:
    return [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient cpu.",
             "lastTransitionTime": stamp(ago)}]


def test_a_healthy_pool_has_no_problem() -> None:
    healthy = deployment({"type": "Available", "status": "True"},
                         {"type": "Progressing", "status": "True",
                          "reason": "NewReplicaSetAvailable"})
    assert workload_problems(healthy, [pod("a", running()), pod("b", running())], NOW) == []
    assert workload_problems(None, None, NOW) == []


def test_pods_the_replica_set_cannot_create_are_reported_with_its_message() -> None:
    refused = deployment({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                          "message": QUOTA})
    assert workload_problems(refused, [], NOW) == [
        Problem(PODS_NOT_CREATED, f"pods cannot be created: {QUOTA}")]
    cleared = deployment({"type": "ReplicaFailure", "status": "False", "message": QUOTA})
    assert workload_problems(cleared, [], NOW) == []


def test_a_stalled_rollout_is_reported_and_a_slow_one_is_not() -> None:
    message = 'ReplicaSet "demo-7c9f" has timed out progressing.'
    stalled = deployment({"type": "Progressing", "status": "False",
                          "reason": "ProgressDeadlineExceeded", "message": message})
    assert workload_problems(stalled, [], NOW) == [
        Problem(ROLLOUT_STALLED, f"the rollout stalled: {message}")]
    going = deployment({"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"})
    assert workload_problems(going, [], NOW) == []


def test_stuck_containers_are_counted_by_reason_with_the_first_detail() -> None:
    pull = 'Back-off pulling image "registry.example/agent:2"'
    pods = [
        pod("a", waiting("ImagePullBackOff", pull)),
        pod("b", waiting("ErrImagePull", "rpc error: not found")),
        pod("c", waiting("ImagePullBackOff", pull)),
        pod("d", waiting("ContainerCreating")),
        pod("e", running()),
        pod("f", waiting("ImagePullBackOff", pull), deleting=True),
    ]
    assert workload_problems(deployment(), pods, NOW) == [Problem(PODS_FAILING, (
        f"2 pods ImagePullBackOff: {pull}; 1 pod ErrImagePull: rpc error: not found"))]


def test_a_crash_loop_names_the_exit_code_and_an_init_container_counts() -> None:
    crashing = waiting("CrashLoopBackOff", "back-off 40s restarting failed container",
                       lastState={"terminated": {"exitCode": 3, "reason": "Error"}})
    config = {"name": "setup", "state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": 'secret "keys" not found'}}}
    pods = [pod("a", crashing), pod("b", waiting("PodInitializing"), init=[config])]
    assert workload_problems(deployment(), pods, NOW) == [Problem(PODS_FAILING, (
        "1 pod CrashLoopBackOff: container worker exited with code 3 (Error); "
        '1 pod CreateContainerConfigError: secret "keys" not found'))]


def test_a_crash_loop_stays_reported_while_the_container_runs_between_two_back_offs() -> None:
    """Between two back-offs the container runs a few seconds: still the same crash loop,
    or the pool would turn Degraded and back (with a Warning and a Recovered event) at each
    restart."""
    def restarted(restarts: int, *, ready: bool = False, crashed_ago: float = 20,
                  exit_code: int = 3, running_for: float = 5) -> dict[str, Any]:
        return {"name": "worker", "state": {"running": {"startedAt": stamp(running_for)}},
                "ready": ready, "restartCount": restarts, "lastState": {
                    "terminated": {"exitCode": exit_code, "reason": "Error",
                                   "finishedAt": stamp(crashed_ago)}}}

    looping = [Problem(PODS_FAILING,
                       "1 pod CrashLoopBackOff: container worker exited with code 3 (Error)")]
    assert workload_problems(deployment(), [pod("a", restarted(4))], NOW) == looping
    assert workload_problems(deployment(), [pod("a", restarted(4, ready=True))], NOW) == []
    assert workload_problems(deployment(), [pod("a", restarted(1))], NOW) == [], (
        "one crash is no loop yet")
    assert workload_problems(deployment(), [pod("a", restarted(4, crashed_ago=900))], NOW) == []
    assert workload_problems(deployment(), [pod("a", restarted(4, exit_code=0))], NOW) == []
    assert workload_problems(deployment(), [pod("a", restarted(4, running_for=300))], NOW) == [
    ], "running for minutes since: unready for another reason (a drain, a slow start)"
    just_crashed = {"name": "worker", "restartCount": 3, "ready": False, "state": {
        "terminated": {"exitCode": 3, "reason": "Error", "finishedAt": stamp(1)}}}
    assert workload_problems(deployment(), [pod("a", just_crashed)], NOW) == looping, (
        "the moment between a crash and its back-off")


def test_pods_waiting_for_a_node_are_reported_only_after_the_grace() -> None:
    fresh = pod("a", phase="Pending", conditions=unschedulable(UNSCHEDULABLE_GRACE_SECONDS - 1))
    old = pod("b", phase="Pending", conditions=unschedulable(UNSCHEDULABLE_GRACE_SECONDS + 1))
    assert workload_problems(deployment(), [fresh], NOW) == []
    assert workload_problems(deployment(), [fresh, old], NOW) == [Problem(
        PODS_UNSCHEDULABLE, "1 pod Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.")]


def test_a_cluster_without_a_node_autoscaler_reports_pending_pods_sooner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiting = pod("a", phase="Pending", conditions=unschedulable(45))
    assert workload_problems(deployment(), [waiting], NOW) == []
    assert [p.reason for p in workload_problems(deployment(), [waiting], NOW,
                                                unschedulable_grace=30)] == [PODS_UNSCHEDULABLE]
    assert OperatorSettings().unschedulable_grace_seconds == UNSCHEDULABLE_GRACE_SECONDS
    monkeypatch.setenv("AGENTPOOL_OPERATOR_UNSCHEDULABLE_GRACE_SECONDS", "30")
    assert OperatorSettings().unschedulable_grace_seconds == 30


def test_every_problem_at_once_keeps_the_deployments_first() -> None:
    everything = deployment(
        {"type": "ReplicaFailure", "status": "True", "message": QUOTA},
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"})
    pods = [pod("a", waiting("InvalidImageName", "bad name")),
            pod("b", phase="Pending", conditions=unschedulable(600))]
    reasons = [p.reason for p in workload_problems(everything, pods, NOW)]
    assert reasons == [PODS_NOT_CREATED, ROLLOUT_STALLED, PODS_FAILING, PODS_UNSCHEDULABLE]
