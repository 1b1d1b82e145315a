from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from agentpool.models import AgentPoolSpec
from agentpool.protocol import WORKER_LIVENESS_WINDOW, InstanceState, RequeueResult
from agentpool_operator.recovery import (
    DeletePod,
    InstanceView,
    PodView,
    RecoveryInputs,
    RecoveryPolicy,
    RequestDrain,
    Requeue,
    decide_recovery,
    gone_pod_requeues,
    judged_instances,
    pod_view,
    unavailable_budget,
)
from agentpool_operator.recovery_actions import STUCK_POD_DRAIN_SECONDS, policy_of, requeue_message

NOW = 10_000.0
RUNNING_SINCE = NOW - 3600
"""When the worker containers of pods judged unready started: long before they turned unready."""
POLICY = RecoveryPolicy(unready_grace_seconds=60, drain_seconds=30, max_unavailable=1)


def decide(pods: list[PodView], **kw: object) -> list[object]:
    return list(decide_recovery(RecoveryInputs(pods=pods, **kw), POLICY, NOW))  # type: ignore[arg-type]


def test_healthy_pods_need_nothing() -> None:
    pods = [PodView("a"), PodView("b")]
    assert decide(pods, instances=[InstanceView("a", "i1", 1.0, held=3)]) == []


def test_deleted_pod_gets_all_its_tasks_requeued() -> None:
    assert decide([PodView("a", deleting=True)]) == [Requeue("a", "pod deleted")]


def test_a_pod_past_its_end_whose_worker_still_beats_is_drained_as_its_tasks_go_back() -> None:
    """Its node cut off from the API server: the pod stays Terminating, the worker runs on
    and would claim again what is taken back, spending an attempt each round."""
    pod = PodView("a", deleting=True, phase="Running", container_started_at=RUNNING_SINCE,
                  deletion_deadline=NOW - 1)
    beating = InstanceView("a", "i", 1.0, held=1, last_seen=NOW - 1)
    assert decide([pod], instances=[beating]) == [
        Requeue("a", "pod deleted", keep_drain=True),
        RequestDrain("a", "pod deleted, yet its worker still runs")]
    silent = dataclasses.replace(beating, last_seen=NOW - WORKER_LIVENESS_WINDOW)
    assert decide([pod], instances=[silent]) == [Requeue("a", "pod deleted")]


def test_evicted_pod_gets_its_tasks_requeued() -> None:
    actions = decide([PodView("a", phase="Failed", reason="Evicted")])
    assert actions == [Requeue("a", "pod evicted")]


def test_failed_pod_gets_its_tasks_requeued() -> None:
    assert decide([PodView("a", phase="Failed")]) == [Requeue("a", "pod failed")]


def test_pod_whose_container_exited_gets_its_tasks_requeued() -> None:
    assert decide([PodView("a", phase="Succeeded")]) == [Requeue("a", "pod exited")]


def test_pod_on_a_vanished_node_gets_its_tasks_requeued() -> None:
    actions = decide([PodView("a", node="n2"), PodView("b", node="n1")],
                     gone_nodes=frozenset({"n2"}))
    assert actions == [Requeue("a", "node n2 is gone")]


def test_nodes_not_known_to_be_gone_do_not_count_as_gone() -> None:
    assert decide([PodView("a", node="n2")]) == []


def test_restarted_container_requeues_only_earlier_instances() -> None:
    pod = PodView("a", restarts=1, container_started_at=500.0)
    instances = [
        InstanceView("a", "old", started=100.0, held=2),
        InstanceView("a", "new", started=501.0, held=1),
    ]
    assert decide([pod], instances=instances) == [
        Requeue("a", "worker container restarted", instances=("old",))
    ]


def test_restart_with_nothing_held_by_earlier_instances_needs_nothing() -> None:
    pod = PodView("a", restarts=2, container_started_at=500.0)
    assert decide([pod], instances=[InstanceView("a", "old", 100.0, held=0)]) == []


def test_instances_of_a_pod_that_no_longer_exists_are_requeued() -> None:
    instances = [InstanceView("gone", "i", 1.0, held=1), InstanceView("a", "j", 1.0, held=1)]
    assert decide([PodView("a")], instances=instances) == [
        Requeue("gone", "pod no longer exists", instances=("i",))
    ]


def test_of_a_pod_no_longer_listed_only_its_silent_instances_are_requeued() -> None:
    """Another instance under the same name heart-beats (a new pod of that name, or one
    whose label was taken off): it keeps its tasks."""
    judged = judged_instances([
        InstanceState("gone:old", "gone", "old", 1.0, NOW - WORKER_LIVENESS_WINDOW, held=1),
        InstanceState("gone:new", "gone", "new", 1.0, NOW, held=2)], {"a"}, NOW)
    assert decide([PodView("a")], instances=judged) == [
        Requeue("gone", "pod no longer exists", instances=("old",))]


def test_single_pod_events_never_requeue_other_pods() -> None:
    instances = [InstanceView("other", "i", 1.0, held=1)]
    assert decide([PodView("a")], instances=instances, pods_complete=False) == []


def test_unready_within_grace_is_left_alone() -> None:
    pod = PodView("a", ready=False, ready_changed_at=NOW - 59, container_started_at=RUNNING_SINCE)
    assert decide([pod]) == []


def test_unready_past_grace_is_drained_first() -> None:
    pod = PodView("a", ready=False, ready_changed_at=NOW - 61, container_started_at=RUNNING_SINCE)
    assert decide([pod]) == [RequestDrain("a", "unready for 61s, no worker heartbeat")]


def test_drained_pod_is_deleted_after_drain_seconds() -> None:
    pod = PodView("a", ready=False, ready_changed_at=NOW - 100, container_started_at=RUNNING_SINCE)
    instances = [InstanceView("a", "i", 1.0, held=1)]
    assert decide([pod], instances=instances, drains={"a": NOW - 10}) == []
    actions = decide([pod], instances=instances, drains={"a": NOW - 31})
    assert actions == [DeletePod("a", "unready for 100s, drained")]


def test_drained_pod_holding_nothing_is_deleted_at_once() -> None:
    pod = PodView("a", ready=False, ready_changed_at=NOW - 100, container_started_at=RUNNING_SINCE)
    instances = [InstanceView("a", "i", 1.0, held=0)]
    assert decide([pod], instances=instances, drains={"a": NOW - 1}) == [
        DeletePod("a", "unready for 100s, drained")
    ]


def test_a_pod_draining_for_a_scale_down_is_not_stuck() -> None:
    """Chosen by a scale-down, a pod is unready on purpose while its runs go on, for as long
    as they last; it neither gets replaced nor uses up the budget of stuck pods."""
    leaving = PodView("a", ready=False, ready_changed_at=NOW - 900,
                      container_started_at=RUNNING_SINCE, scaling_down=True)
    stuck = PodView("b", ready=False, ready_changed_at=NOW - 100,
                    container_started_at=RUNNING_SINCE)
    instances = [InstanceView("a", "i", 1.0, held=2)]
    assert decide([leaving], instances=instances, drains={"a": NOW - 900}) == []
    actions = decide([leaving, stuck], instances=instances, drains={"a": NOW - 900},
                     desired_replicas=2)
    assert actions == [RequestDrain("b", "unready for 100s, no worker heartbeat")]
    marked = {"metadata": {"name": "a", "annotations": {
        "controller.kubernetes.io/pod-deletion-cost": "-1000"}}, "status": {"phase": "Running"}}
    assert pod_view(marked).scaling_down
    assert not pod_view({"metadata": {"name": "b"}}).scaling_down


def test_unready_time_counts_from_the_worker_containers_start() -> None:
    """The Ready condition turned False when the pod was created; image pulls and init
    containers (a model download) took ten minutes before the worker container started."""
    def pod(started: float) -> PodView:
        return PodView("a", ready=False, ready_changed_at=NOW - 600, container_started_at=started)

    assert decide([pod(NOW - 5)]) == []
    assert decide([pod(NOW - 59)]) == []
    assert decide([pod(NOW - 61)]) == [RequestDrain("a", "unready for 61s, no worker heartbeat")]


def test_a_pod_whose_worker_has_not_started_is_left_to_the_kubelet() -> None:
    """Before the worker container runs, or before its startup probe passed, the kubelet
    judges it (the startup probe restarts a worker that does not come up)."""
    pending = PodView("a", ready=False, ready_changed_at=NOW - 600)
    starting = PodView("b", ready=False, ready_changed_at=NOW - 600,
                       container_started_at=NOW - 300, startup_passed=False)
    assert decide([pending, starting], desired_replicas=2) == []
    drains = {"a": NOW - 100, "b": NOW - 100}
    assert decide([pending, starting], drains=drains, desired_replicas=2) == []


def test_pod_view_reads_whether_the_startup_probe_passed() -> None:
    def pod(**worker_status: object) -> dict[str, object]:
        return {"metadata": {"name": "w-1"}, "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "containerStatuses": [{
                "name": "worker", "restartCount": 0, "ready": False,
                "state": {"running": {"startedAt": "2026-01-01T00:10:00Z"}}, **worker_status}]}}

    assert pod_view(pod(started=False)).startup_passed is False
    assert pod_view(pod(started=True)).startup_passed is True
    assert pod_view(pod()).startup_passed is True
    view = pod_view(pod(started=False))
    assert decide_recovery(RecoveryInputs(pods=[view]), POLICY,
                           (view.container_started_at or 0) + 3600) == []


def test_an_unready_worker_that_heartbeats_is_not_stuck() -> None:
    """A failing `ready` hook (an LLM API down for every pod alike) takes the pods out of
    service; their workers still heartbeat, so none is replaced, round after round."""
    pods = [PodView(f"p{i}", ready=False, ready_changed_at=NOW - 900,
                    container_started_at=RUNNING_SINCE) for i in range(8)]
    beating = [InstanceView(p.name, "i1", RUNNING_SINCE, held=0, last_seen=NOW - 5)
               for p in pods]
    policy = RecoveryPolicy(unready_grace_seconds=60, drain_seconds=30, max_unavailable="25%")
    for later in (0, 2, 600):
        inputs = RecoveryInputs(
            pods=pods, instances=[dataclasses.replace(i, last_seen=NOW + later - 5)
                                  for i in beating], desired_replicas=8)
        assert decide_recovery(inputs, policy, NOW + later) == []


def test_an_unready_pod_whose_worker_stopped_heartbeating_is_stuck() -> None:
    pod = PodView("a", ready=False, ready_changed_at=NOW - 90, container_started_at=RUNNING_SINCE)
    silent = InstanceView("a", "i1", RUNNING_SINCE, held=1, last_seen=NOW - WORKER_LIVENESS_WINDOW)
    assert decide([pod], instances=[silent]) == [
        RequestDrain("a", "unready for 90s, no worker heartbeat")]
    assert decide([pod]) == [RequestDrain("a", "unready for 90s, no worker heartbeat")], \
        "no instance registered since the worker started"


def test_a_pod_asked_to_drain_is_deleted_even_once_its_worker_heartbeats_again() -> None:
    """Its worker came back (a network partition healed), saw the drain and drained: it is
    unready on recovery's request now, and would stay so."""
    pod = PodView("a", ready=False, ready_changed_at=NOW - 100, container_started_at=RUNNING_SINCE)
    back = InstanceView("a", "i1", RUNNING_SINCE, held=0, last_seen=NOW - 1)
    assert decide([pod], instances=[back], drains={"a": NOW - 5}) == [
        DeletePod("a", "unready for 100s, drained")]


def test_budget_limits_how_many_pods_are_replaced_at_once() -> None:
    pods = [PodView(f"p{i}", ready=False, ready_changed_at=NOW - 100 - i,
                    container_started_at=RUNNING_SINCE) for i in range(5)]
    actions = decide(pods, desired_replicas=5)
    assert actions == [RequestDrain("p4", "unready for 104s, no worker heartbeat")]
    policy = RecoveryPolicy(unready_grace_seconds=60, drain_seconds=30, max_unavailable="40%")
    drains = decide_recovery(RecoveryInputs(pods=pods, desired_replicas=5), policy, NOW)
    assert len(drains) == 2


def test_pods_already_being_replaced_use_up_the_budget() -> None:
    pods = [
        PodView("a", ready=False, ready_changed_at=NOW - 100, container_started_at=RUNNING_SINCE),
        PodView("b", ready=False, ready_changed_at=NOW - 100, container_started_at=RUNNING_SINCE),
    ]
    actions = decide(pods, drains={"a": NOW - 1}, instances=[InstanceView("a", "i", 1, 1)],
                     desired_replicas=4)
    assert actions == []


def test_budget_rounds_down_but_allows_one_unless_it_is_zero() -> None:
    assert unavailable_budget("25%", 3) == 1
    assert unavailable_budget("25%", 8) == 2
    assert unavailable_budget("1%", 1) == 1
    assert unavailable_budget(3, 10) == 3
    assert unavailable_budget(0, 10) == 0
    assert unavailable_budget("0%", 10) == 0


def test_max_unavailable_zero_replaces_no_stuck_pod_yet_requeues_the_dead() -> None:
    """As in Kubernetes, 0 allows none at a time: a stuck pod stays. Its tasks come back with
    their leases; a dead pod's tasks are requeued as ever (the ReplicaSet replaces the pod);
    a pod asked to drain under an earlier budget is deleted once drained, not left idle."""
    stuck = PodView("a", ready=False, ready_changed_at=NOW - 900,
                    container_started_at=RUNNING_SINCE)
    drained = dataclasses.replace(stuck, name="b")
    dead = PodView("c", phase="Failed", reason="Evicted")
    inputs = RecoveryInputs(pods=[stuck, dead], desired_replicas=3)
    draining = RecoveryInputs(pods=[stuck, drained, dead], drains={"b": NOW - 5},
                              desired_replicas=3)
    for none in (0, "0%"):
        policy = RecoveryPolicy(unready_grace_seconds=60, drain_seconds=30, max_unavailable=none)
        assert decide_recovery(inputs, policy, NOW) == [Requeue("c", "pod evicted")]
        assert decide_recovery(draining, policy, NOW) == [
            Requeue("c", "pod evicted"), DeletePod("b", "unready for 900s, drained")]
    assert decide_recovery(inputs, POLICY, NOW) == [
        Requeue("c", "pod evicted"), RequestDrain("a", "unready for 900s, no worker heartbeat")]


def test_pod_view_reads_the_api_shape() -> None:
    pod = {
        "metadata": {"name": "w-1", "deletionTimestamp": None},
        "spec": {"nodeName": "n1"},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "containerStatuses": [{
                "name": "worker", "restartCount": 2,
                "state": {"running": {"startedAt": "2026-01-01T00:00:10Z"}},
            }],
        },
    }
    view = pod_view(pod)
    assert view.name == "w-1" and view.node == "n1" and not view.deleting
    assert view.ready is False and view.restarts == 2
    assert view.container_started_at is not None and view.ready_changed_at is not None
    assert view.container_started_at - view.ready_changed_at == 10


def test_deleted_pod_whose_worker_still_runs_is_left_to_drain() -> None:
    draining = PodView("a", deleting=True, deletion_deadline=NOW + 30,
                       container_started_at=NOW - 600)
    assert decide([draining]) == []
    assert decide([draining], gone_nodes=frozenset({"n2"})) == []


def test_deleted_pod_is_requeued_once_its_worker_stopped_or_its_grace_ended() -> None:
    stopped = PodView("a", deleting=True, deletion_deadline=NOW + 30)
    overdue = PodView("b", deleting=True, deletion_deadline=NOW - 1,
                      container_started_at=NOW - 600)
    assert decide([stopped, overdue]) == [Requeue("a", "pod deleted"), Requeue("b", "pod deleted")]


def test_deleted_pod_on_a_vanished_node_is_requeued_at_once() -> None:
    pod = PodView("a", deleting=True, deletion_deadline=NOW + 30, node="n2",
                  container_started_at=NOW - 600)
    assert decide([pod], gone_nodes=frozenset({"n2"})) == [Requeue("a", "pod deleted")]


def test_pod_view_reads_the_deletion_deadline() -> None:
    pod = {"metadata": {"name": "w-1", "deletionTimestamp": "2026-01-01T00:01:00Z"},
           "status": {"phase": "Running"}}
    view = pod_view(pod)
    assert view.deleting and view.deletion_deadline is not None
    assert pod_view({"metadata": {"name": "w-2"}}).deletion_deadline is None


def test_instances_of_unlisted_pods_are_judged_once_they_stopped_beating() -> None:
    def state(pod: str, last_seen: float) -> InstanceState:
        return InstanceState(f"{pod}:i", pod, "i", started=1.0, last_seen=last_seen, held=2)

    judged = judged_instances(
        [state("listed", NOW), state("new", NOW - 1),
         state("gone", NOW - WORKER_LIVENESS_WINDOW)],
        {"listed"}, NOW,
    )
    assert judged == [InstanceView("listed", "i", 1.0, 2, last_seen=NOW),
                      InstanceView("gone", "i", 1.0, 2, last_seen=NOW - WORKER_LIVENESS_WINDOW)]


def test_pods_gone_at_start_are_requeued_without_waiting_for_a_liveness_window() -> None:
    instances = [
        InstanceView("w-gone", "i1", 1.0, held=2),
        InstanceView("w-gone", "i2", 1.0, held=1),
        InstanceView("w-alive", "i1", 1.0, held=3),
    ]
    assert gone_pod_requeues(instances, {"w-alive"}, "w") == [
        Requeue("w-gone", "pod no longer exists")]


def test_gone_pods_holding_nothing_need_nothing() -> None:
    instances = [InstanceView("w-gone", "i1", 1.0, held=0),
                 InstanceView("w-alive", "i1", 1.0, held=1)]
    assert gone_pod_requeues(instances, {"w-alive"}, "w") == []


def test_each_gone_pod_is_requeued_once_in_name_order() -> None:
    instances = [InstanceView("w-b", "i1", 1.0, held=1), InstanceView("w-a", "i1", 1.0, held=1),
                 InstanceView("w-b", "i2", 1.0, held=1)]
    assert gone_pod_requeues(instances, set(), "w") == [
        Requeue("w-a", "pod no longer exists"), Requeue("w-b", "pod no longer exists")]


def test_workers_not_named_like_the_pools_pods_keep_their_tasks() -> None:
    instances = [InstanceView("laptop", "i1", 1.0, held=1),
                 InstanceView("other-7f9c-x2k4p", "i1", 1.0, held=1),
                 InstanceView("w-7f9c-x2k4p", "i1", 1.0, held=1),
                 InstanceView("w", "i1", 1.0, held=1)]
    assert gone_pod_requeues(instances, set(), "w") == [
        Requeue("w-7f9c-x2k4p", "pod no longer exists")]


def test_the_gone_pods_of_a_pool_with_a_long_name_are_found() -> None:
    """Their names begin with the pool's name cut to 58 characters, with no dash after it."""
    pool = "p" * 60
    pod = pool[:58] + "x2k4p"
    assert gone_pod_requeues([InstanceView(pod, "i1", 1.0, held=1)], set(), pool) == [
        Requeue(pod, "pod no longer exists")]


def test_no_instances_nothing_to_requeue() -> None:
    assert gone_pod_requeues([], {"w-a"}, "w") == []


def test_a_stuck_pod_is_deleted_within_a_minute_whatever_its_drain() -> None:
    """drainSeconds defaults to the task timeout (600 s): waiting that long before deleting a
    stuck pod would hold its replica; its SIGTERM still gives its runs the whole drain."""
    def spec(**worker: object) -> AgentPoolSpec:
        return AgentPoolSpec.model_validate({
            "redis": {"url": "redis://r"},
            "worker": {"image": "i", "handler": "m:f", **worker}})

    default = policy_of(SimpleNamespace(spec=spec()))  # type: ignore[arg-type]
    assert default.drain_seconds == STUCK_POD_DRAIN_SECONDS == 60
    assert policy_of(SimpleNamespace(spec=spec(drainSeconds=5))).drain_seconds == 5  # type: ignore[arg-type]


def test_requeue_event_counts_earlier_instances_only_for_a_restarted_container() -> None:
    """A gone pod's silent instances are all it had: "earlier" would send a reader looking for
    a later one."""
    two = RequeueResult(requeued=2)
    restarted = decide([PodView("w-a", restarts=1, container_started_at=500.0)],
                       instances=[InstanceView("w-a", "old", 100.0, held=2)])
    gone = gone_pod_requeues([InstanceView("w-gone", "i", 100.0, held=2)], [], "w")
    assert [requeue_message(a, two) for a in restarted if isinstance(a, Requeue)] == [
        "requeued 2 tasks of pod w-a (1 earlier instance) (worker container restarted)"]
    assert [requeue_message(a, two) for a in gone] == [
        "requeued 2 tasks of pod w-gone (pod no longer exists)"]
    silent = Requeue("w-gone", "pod no longer exists", instances=("i",))
    assert requeue_message(silent, two) == "requeued 2 tasks of pod w-gone (pod no longer exists)"
