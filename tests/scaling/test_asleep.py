"""A pool is asleep when its last decision was zero, not whenever no pod serves: pods that
leave with their node (or drain, all of them, after a scale-down) leave an awake pool with no
serving pod, which must not pass for one at zero."""

from __future__ import annotations

import json

from agentpool.scaling.policy import QueueLoad, ScalingHistory, ScalingPolicy, decide

NOW = 10_000.0
POLICY = ScalingPolicy(min_replicas=0, max_replicas=5, tasks_per_replica=4, activation_depth=5,
                       scale_down_cooldown_seconds=60)


def history(replicas: int | None, idle_since: float | None = None) -> ScalingHistory:
    return ScalingHistory(since=NOW - 3600, replicas=replicas, idle_since=idle_since)


def test_an_awake_pool_whose_only_pod_leaves_serves_its_queue_below_the_activation_depth(
) -> None:
    """The only pod is on a cordoned node (it serves no more): the 3 tasks it served wait for
    a pod started elsewhere, activationDepth 5 notwithstanding."""
    decision = decide(POLICY, QueueLoad(queued=3), 0, history(1), NOW)
    assert (decision.replicas, decision.asleep) == (1, False)
    assert decision.history.replicas == 1


def test_an_awake_pool_with_no_serving_pod_waits_a_whole_idle_window_before_zero() -> None:
    early = decide(POLICY, QueueLoad(), 0, history(1), NOW)
    assert (early.replicas, early.asleep) == (1, False)
    assert early.reason == ("no pod serves and the queue was busy 0s ago: keeping one pod for "
                            "the 60s window: scaling 0 → 1"), "a scale-up, not towards zero"
    late = decide(POLICY, QueueLoad(), 0, history(1, idle_since=NOW - 60), NOW)
    assert (late.replicas, late.asleep) == (0, True)
    again = decide(POLICY, QueueLoad(queued=3), 0, late.history, NOW + 1)
    assert (again.replicas, again.asleep) == (0, True), "asleep now: activationDepth holds"


def test_a_pool_that_decided_zero_sleeps_while_its_pods_finish_their_runs() -> None:
    """Scaled to zero while a busy pod drains: below the activation depth nothing wakes it."""
    decision = decide(POLICY, QueueLoad(queued=2), 0, history(0), NOW)
    assert (decision.replicas, decision.asleep) == (0, True)
    woken = decide(POLICY, QueueLoad(queued=6), 0, history(0), NOW)
    assert (woken.replicas, woken.asleep) == (2, False)


def test_a_history_without_the_last_decision_takes_no_serving_pod_for_zero() -> None:
    """An older operator's history does not know its last decision."""
    decision = decide(POLICY, QueueLoad(queued=2), 0, history(None), NOW)
    assert (decision.replicas, decision.asleep) == (0, True)


def test_the_last_decision_rides_in_the_history_and_a_blind_one_keeps_it() -> None:
    decided = decide(POLICY, QueueLoad(queued=9), 1, history(1), NOW).history
    assert decided.replicas == 3
    assert ScalingHistory.from_json(json.loads(json.dumps(decided.to_json()))) == decided
    blind = decide(POLICY, QueueLoad.unavailable(), 0, history(1), NOW)
    assert (blind.replicas, blind.history.replicas) == (0, 1)
    assert decide(POLICY, QueueLoad(queued=1), 0, blind.history, NOW).replicas == 1
