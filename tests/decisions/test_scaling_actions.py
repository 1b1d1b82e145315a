"""The pure parts of the scaling loop: which pods leave, stale drains, history, condition."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentpool.scaling.policy import (
    QueueLoad,
    Recommendation,
    ScalingHistory,
    ScalingPolicy,
    decide,
)
from agentpool_operator.scaling_actions import (
    PodSummary,
    loads_needed,
    marks_wanted,
    plan_removal,
    restore_history,
    scaling_condition,
    stale_drains,
)


def pods(*names: str, marked: tuple[str, ...] = (), gone: tuple[str, ...] = ()) -> list[PodSummary]:
    return [PodSummary(n, marked=n in marked, gone=n in gone) for n in names]


def test_pod_summary_from_the_api_object() -> None:
    pod = {
        "metadata": {"name": "p", "annotations": {
            "controller.kubernetes.io/pod-deletion-cost": "-1000"}},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert PodSummary.from_body(pod) == PodSummary("p", ready=True, gone=False, marked=True)
    deleting = {"metadata": {"name": "q", "deletionTimestamp": "2025-01-01T00:00:00Z"}}
    assert PodSummary.from_body(deleting) == PodSummary("q", ready=False, gone=True)
    evicted = {"metadata": {"name": "r"}, "status": {"phase": "Failed"}}
    assert PodSummary.from_body(evicted).gone
    foreign_cost = {"metadata": {"name": "s", "annotations": {
        "controller.kubernetes.io/pod-deletion-cost": "100"}}}
    assert not PodSummary.from_body(foreign_cost).marked


def test_scale_down_marks_the_idle_pods() -> None:
    five = pods("a", "b", "c", "d", "e")
    busy = {"a": 1, "c": 2, "e": 1}
    plan = plan_removal(five, 5, 3, busy)
    assert sorted(plan.mark) == ["b", "d"]
    assert (plan.keep, plan.unmark) == ((), ())


def test_the_least_busy_go_when_no_idle_pod_is_left() -> None:
    plan = plan_removal(pods("a", "b", "c"), 3, 1, {"a": 3, "b": 1, "c": 2})
    assert plan.mark == ("b", "c")


def test_marks_already_placed_count_and_no_more_are_chosen() -> None:
    after = pods("a", "b", "c", "d", "e", marked=("b", "d"))
    assert plan_removal(after, 3, 3, {}) == plan_removal(after, 5, 3, {})
    plan = plan_removal(after, 3, 3, {})
    assert (plan.keep, plan.mark, plan.unmark) == (("b", "d"), (), ())
    assert not loads_needed(after, 3, 3)


def test_a_further_scale_down_adds_to_the_marks() -> None:
    after = pods("a", "b", "c", "d", "e", marked=("b", "d"))
    plan = plan_removal(after, 3, 2, {"a": 1, "c": 0, "e": 1})
    assert (plan.keep, plan.mark) == (("b", "d"), ("c",))


def test_scale_up_before_the_replicaset_acted_withdraws_the_marks() -> None:
    after = pods("a", "b", "c", "d", "e", marked=("b", "d"))
    plan = plan_removal(after, 3, 5, {})
    assert (plan.keep, plan.mark, sorted(plan.unmark)) == ((), (), ["b", "d"])
    partly = plan_removal(after, 3, 4, {"b": 2, "d": 0})
    assert (partly.keep, partly.unmark) == (("d",), ("b",))


def test_a_mark_the_replicaset_did_not_honour_is_withdrawn() -> None:
    # 5 -> 3 with b and d marked, but the ReplicaSet removed b and c (c was unready).
    after = pods("a", "b", "c", "d", "e", marked=("b", "d"), gone=("b", "c"))
    assert marks_wanted(after, 3, 3) == 0
    assert plan_removal(after, 3, 3, {}).unmark == ("d",)


def test_surge_pods_of_a_rollout_are_not_chosen() -> None:
    six = pods("a", "b", "c", "d", "e", "f")
    assert marks_wanted(six, 5, 5) == 0
    assert marks_wanted(six, 5, 4) == 1


def test_pods_not_created_yet_need_no_mark() -> None:
    assert marks_wanted(pods("a", "b"), 3, 2) == 0
    assert marks_wanted(pods("a", "b"), 3, 1) == 1


def test_pods_being_deleted_are_neither_counted_nor_chosen() -> None:
    plan = plan_removal(pods("a", "b", "c", gone=("a",)), 3, 1, {})
    assert plan.mark == ("b",)


@given(
    st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.booleans()), max_size=10),
    st.integers(0, 12),
    st.integers(0, 12),
)
def test_plan_invariants(spec: list[tuple[int, bool, bool]], current: int, target: int) -> None:
    summaries = [PodSummary(f"p{i}", marked=m, gone=g) for i, (_, m, g) in enumerate(spec)]
    in_flight = {f"p{i}": n for i, (n, _, _) in enumerate(spec)}
    plan = plan_removal(summaries, current, target, in_flight)
    wanted = marks_wanted(summaries, current, target)
    live = {p.name for p in summaries if not p.gone}
    marked = {p.name for p in summaries if p.marked and not p.gone}
    leaving = set(plan.leaving)

    assert len(plan.leaving) == len(leaving) == wanted
    assert leaving <= live
    assert set(plan.keep) <= marked and set(plan.unmark) <= marked
    assert not set(plan.mark) & marked
    assert set(plan.keep) | set(plan.unmark) == marked
    if plan.mark:
        assert not plan.unmark, "marks placed before are never swapped for new ones"
    idle_left = [p for p in live - leaving - marked if in_flight[p] == 0]
    assert not (idle_left and any(in_flight[p] for p in plan.mark))

    # Applied, the plan is stable: the next round with the same target changes nothing.
    applied = [replace(p, marked=p.name in leaving) for p in summaries]
    again = plan_removal(applied, target, target, in_flight)
    assert (set(again.keep), again.mark, again.unmark) == (leaving, (), ())


def test_stale_drains_are_those_of_gone_pods_of_this_pool() -> None:
    requests = {
        "nu-7c9d5-aaaaa": 100.0,            # exists
        "nu-7c9d5-bbbbb": 100.0,            # gone
        "nu-7c9d5-ccccc:f00d": 100.0,       # an instance of a gone pod
        "nu-7c9d5-ddddd": 990.0,            # gone, but requested a moment ago
        "other-7c9d5-eeeee": 100.0,         # another pool's
        "nu-x": 100.0,                      # not a name a Deployment gives
    }
    stale = stale_drains(requests, {"nu-7c9d5-aaaaa"}, "nu", now=1000.0, grace=30)
    assert stale == ["nu-7c9d5-bbbbb", "nu-7c9d5-ccccc:f00d"]


def test_restored_history_restarts_its_window() -> None:
    history = ScalingHistory(
        recommendations=(Recommendation(50.0, 3),), since=10.0, last_scale_up=50.0,
    )
    restored = restore_history(json.dumps(history.to_json()), now=500.0)
    assert restored == replace(history, since=500.0)
    assert restore_history(None, 1.0) == ScalingHistory()
    assert restore_history("{not json", 1.0) == ScalingHistory()
    assert restore_history("[1, 2]", 1.0) == ScalingHistory()
    assert restore_history('{"recommendations": [["x", 1]]}', 1.0) == ScalingHistory()


def test_restored_history_blocks_a_scale_down_for_one_window() -> None:
    policy = ScalingPolicy(min_replicas=1, max_replicas=10, scale_down_cooldown_seconds=60)
    old = ScalingHistory(since=0.0, last_scale_up=0.0)
    restored = restore_history(json.dumps(old.to_json()), now=1000.0)
    assert decide(policy, QueueLoad(), 5, restored, 1000.0).replicas == 5
    assert decide(policy, QueueLoad(), 5, restored, 1061.0).replicas == 1


POLICY = ScalingPolicy(min_replicas=1, max_replicas=4, tasks_per_replica=2,
                       scale_up_cooldown_seconds=30, scale_down_cooldown_seconds=60)


def condition(load: QueueLoad, current: int, history: ScalingHistory | None = None,
              policy: ScalingPolicy = POLICY, now: float = 100.0) -> tuple[str, str]:
    history = history if history is not None else ScalingHistory(since=0.0)
    decision = decide(policy, load, current, history, now)
    update = scaling_condition(policy, load, decision)
    return update.status, update.reason


@pytest.mark.parametrize(("load", "current", "expected"), [
    (QueueLoad(queued=5), 1, ("True", "ScaledUp")),
    (QueueLoad(queued=1), 3, ("True", "ScaledDown")),
    (QueueLoad(queued=3), 2, ("True", "Stable")),
    (QueueLoad(queued=20), 4, ("True", "AtMaximum")),
    (QueueLoad.unavailable(), 3, ("False", "QueueUnavailable")),
    (QueueLoad.unavailable(), 6, ("True", "ScaledDown")),
])
def test_scaling_condition(load: QueueLoad, current: int, expected: tuple[str, str]) -> None:
    assert condition(load, current) == expected


def test_held_decisions_say_what_they_wait_for() -> None:
    recent_up = ScalingHistory(since=0.0, last_scale_up=90.0)
    assert condition(QueueLoad(queued=7), 2, recent_up) == ("True", "CoolingDown")
    assert condition(QueueLoad(queued=1), 3, recent_up) == ("True", "Stabilizing")
    fixed = ScalingPolicy(min_replicas=3, max_replicas=3)
    assert condition(QueueLoad(queued=50), 3, policy=fixed) == ("False", "FixedSize")
    asleep = ScalingPolicy(min_replicas=0, max_replicas=3, activation_depth=5)
    assert condition(QueueLoad(queued=2), 0, policy=asleep) == ("True", "Stable")


def test_messages_of_a_held_size_do_not_move_with_the_backlog() -> None:
    def message(queued: int) -> str:
        load = QueueLoad(queued=queued)
        decision = decide(POLICY, load, 2, ScalingHistory(since=0.0), 100.0)
        return scaling_condition(POLICY, load, decision).message

    assert message(3) == message(4)


def test_scale_down_waits_for_chosen_pods_to_turn_unready() -> None:
    from agentpool_operator.scaling_actions import DRAIN_READY_TIMEOUT_SECONDS, still_ready

    pods = [PodSummary("a", ready=True, marked=True), PodSummary("b", ready=False, marked=True),
            PodSummary("c", ready=True)]
    now = 1000.0
    assert still_ready(["a", "b"], pods, {"a": now - 5, "b": now - 5}, now) == ["a"]
    assert still_ready(["b"], pods, {"b": now}, now) == []
    late = now - DRAIN_READY_TIMEOUT_SECONDS
    assert still_ready(["a"], pods, {"a": late}, now) == [], "the wait is bounded"
    assert still_ready(["a"], pods, {}, now) == ["a"], "a drain requested just now"
