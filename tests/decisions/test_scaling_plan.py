"""The pure parts of the scaling loop: which pods leave, stale drains, history, condition."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentpool.scaling.policy import (
    QueueLoad,
    Recommendation,
    ScalingHistory,
    ScalingPolicy,
    decide,
)
from agentpool_operator.scaling_plan import (
    DRAIN_READY_TIMEOUT_SECONDS,
    REPLICAS_ANNOTATION,
    OutsideChange,
    PodSummary,
    PodWork,
    ScalePlan,
    draining_fields,
    lost_replicas,
    not_serving_pods,
    plan_paused,
    plan_scale,
    replicas_changed_outside,
    restore_history,
    scaling_condition,
    serving_load,
    serving_replicas,
    sleep_unrecorded,
    stale_drains,
    zero_ready,
)


def pods(*names: str, marked: tuple[str, ...] = (), released: tuple[str, ...] = (),
         gone: tuple[str, ...] = (), unready: tuple[str, ...] = ()) -> list[PodSummary]:
    return [
        PodSummary(n, ready=n not in unready, gone=n in gone,
                   marked=n in marked or n in released, released=n in released)
        for n in names
    ]


def work(**in_flight: int) -> dict[str, PodWork]:
    return {name: PodWork(count) for name, count in in_flight.items()}


NOW = 1000.0


def test_pod_summary_from_the_api_object() -> None:
    pod = {
        "metadata": {"name": "p", "annotations": {
            "controller.kubernetes.io/pod-deletion-cost": "-1000"}},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert PodSummary.from_body(pod) == PodSummary("p", ready=True, gone=False, marked=True)
    released = {"metadata": {"name": "p", "annotations": {
        "controller.kubernetes.io/pod-deletion-cost": "-2000"}}}
    assert PodSummary.from_body(released) == PodSummary(
        "p", ready=False, marked=True, released=True)
    deleting = {"metadata": {"name": "q", "deletionTimestamp": "2025-01-01T00:10:15Z",
                             "deletionGracePeriodSeconds": 615}}
    assert PodSummary.from_body(deleting) == PodSummary(
        "q", ready=False, gone=True, stopping_since=1735689600.0)
    evicted = {"metadata": {"name": "r"}, "status": {"phase": "Failed"}}
    assert PodSummary.from_body(evicted).gone
    foreign_cost = {"metadata": {"name": "s", "annotations": {
        "controller.kubernetes.io/pod-deletion-cost": "100"}}}
    assert not PodSummary.from_body(foreign_cost).marked


def test_the_policy_sees_serving_replicas_and_their_runs_only() -> None:
    summaries = pods("a", "b", "c", "d", marked=("b",), released=("c",), gone=("d",))
    assert serving_replicas(summaries, 4, given_back=()) == 2
    assert serving_replicas(summaries, 3, given_back=("c",)) == 2
    load = serving_load(QueueLoad(queued=2, in_flight=6), summaries, work(a=2, b=4), ())
    assert load == QueueLoad(queued=2, in_flight=2, draining_runs=4)


def test_draining_counts_the_pods_that_finish_their_runs_before_they_go() -> None:
    """Marked by a scale-down (or leaving with their node), and stopped by a rollout or a
    deletion while they hold runs; the longest since its drain or deletion was asked."""
    summaries = [
        PodSummary("kept"),
        PodSummary("chosen", ready=False, marked=True),
        PodSummary("old-busy", ready=False, gone=True, stopping_since=NOW - 300),
        PodSummary("old-idle", ready=False, gone=True, stopping_since=NOW - 900),
        PodSummary("evicted", ready=False, gone=True),
    ]
    fields = draining_fields(summaries, ScalePlan(replicas=2), {"chosen": NOW - 60},
                             work(**{"old-busy": 2, "evicted": 1, "kept": 1}))
    assert fields == {"drainingReplicas": 2, "drainingSince": "1970-01-01T00:11:40Z"}
    assert draining_fields([PodSummary("a")], ScalePlan(replicas=1), {}, {}) == {
        "drainingReplicas": 0, "drainingSince": None}


def test_the_runs_of_a_terminating_pod_need_no_new_capacity() -> None:
    """A rollout's old pod finishes its runs while it terminates: they free no slot of the
    pool, and the policy must not start pods for them."""
    summaries = pods("new-a", "new-b", "old", gone=("old",))
    runs = {"new-a": PodWork(1, (NOW - 10,)), "old": PodWork(3, (NOW - 5, NOW - 6, NOW - 7))}
    load = serving_load(QueueLoad(queued=1, in_flight=4), summaries, runs, (), NOW)
    assert load == QueueLoad(queued=1, in_flight=1, run_ages=(10.0,), draining_runs=3)


def test_the_policy_sees_the_run_ages_of_serving_pods_only() -> None:
    summaries = pods("a", "b", marked=("b",))
    runs = {"a": PodWork(2, (NOW - 30, NOW - 5)), "b": PodWork(1, (NOW - 400,))}
    load = serving_load(QueueLoad(queued=1, in_flight=3), summaries, runs, (), NOW)
    assert load == QueueLoad(queued=1, in_flight=2, run_ages=(30.0, 5.0), draining_runs=1)


def test_the_runs_of_a_pod_no_longer_listed_give_no_ages() -> None:
    """A deleted pod's worker stays registered until its leases run out: its runs still count
    in flight, but they serve nothing, and their ages only grow."""
    runs = {"a": PodWork(1, (NOW - 10,)), "deleted": PodWork(2, (NOW - 900, NOW - 800))}
    load = serving_load(QueueLoad(queued=1, in_flight=3), pods("a"), runs, (), NOW)
    assert load == QueueLoad(queued=1, in_flight=3, run_ages=(10.0,))


def test_a_kept_drained_pod_holds_its_replica_and_is_not_released() -> None:
    summaries = pods("a", "b", "c")
    busy = work(a=3)
    plan = plan_scale(summaries, 3, (), 1, busy, NOW, keep=2)
    assert (plan.drain, plan.release, plan.replicas) == (("b",), ("c",), 3)
    after = pods("a", "b", "c", marked=("b",), released=("c",), unready=("b", "c"))
    plan = plan_scale(after, 3, (), 1, busy, NOW, keep=2)
    assert (plan.give_back, plan.replicas) == (("c",), 2)
    plan = plan_scale(after, 3, (), 2, busy, NOW, keep=2)
    assert (len(plan.withdraw), plan.start, plan.replicas) == (1, 0, 3)


def test_idle_pods_chosen_are_released_and_their_replicas_go_once_unready() -> None:
    five = pods("a", "b", "c", "d", "e")
    busy = work(a=1, c=2, e=1)
    plan = plan_scale(five, 5, (), 3, busy, NOW)
    assert (sorted(plan.release), plan.drain, plan.replicas) == (["b", "d"], (), 5)

    after = pods("a", "b", "c", "d", "e", released=("b", "d"))
    assert plan_scale(after, 5, (), 3, busy, NOW).give_back == (), "still Ready"
    drained = pods("a", "b", "c", "d", "e", released=("b", "d"), unready=("b", "d"))
    plan = plan_scale(drained, 5, (), 3, busy, NOW)
    assert (plan.give_back, plan.given_back, plan.replicas) == (("b", "d"), ("b", "d"), 3)
    again = plan_scale(drained, 3, ("b", "d"), 3, busy, NOW)
    assert (again.replicas, again.give_back, again.release, again.drain) == (3, (), (), ())


def test_busy_pods_chosen_keep_their_replicas_until_their_runs_end() -> None:
    three = pods("a", "b", "c")
    plan = plan_scale(three, 3, (), 1, work(a=3, b=1, c=2), NOW)
    assert (plan.drain, plan.release, plan.replicas) == (("b", "c"), (), 3)

    draining = pods("a", "b", "c", marked=("b", "c"), unready=("b", "c"))
    still = plan_scale(draining, 3, (), 1, work(a=3, b=1, c=2), NOW)
    assert (still.drain, still.release, still.give_back, still.replicas) == ((), (), (), 3)
    b_done = plan_scale(draining, 3, (), 1, work(a=3, c=2), NOW)
    assert (b_done.release, b_done.replicas) == (("b",), 3)
    released = pods("a", "b", "c", marked=("c",), released=("b",), unready=("b", "c"))
    assert plan_scale(released, 3, (), 1, work(a=3, c=2), NOW).replicas == 2


def test_at_equal_runs_the_pod_with_the_oldest_run_is_drained() -> None:
    runs = {"a": PodWork(1, (NOW - 10,)), "b": PodWork(1, (NOW - 300,)),
            "c": PodWork(1, (NOW - 40,))}
    assert plan_scale(pods("a", "b", "c"), 3, (), 2, runs, NOW).drain == ("b",)


def test_a_scale_up_withdraws_drains_before_it_starts_pods() -> None:
    summaries = pods("a", "b", "c", marked=("b", "c"), unready=("b", "c"))
    busy = work(a=4, b=1, c=2)
    plan = plan_scale(summaries, 3, (), 2, busy, NOW)
    assert (plan.withdraw, plan.start, plan.replicas) == (("c",), 0, 3)
    plan = plan_scale(summaries, 3, (), 4, busy, NOW)
    assert (sorted(plan.withdraw), plan.start, plan.replicas) == (["b", "c"], 1, 4)


def test_a_paused_pool_takes_back_the_pods_its_scale_down_drains() -> None:
    """Paused, every pod the Deployment counts serves: the drains a scale-down asked for
    (chosen or released) are withdrawn. The pods leaving with their node, the pod whose
    replica was given back and the pod being deleted keep draining; the count stays."""
    summaries = [
        PodSummary("serving"),
        PodSummary("chosen", ready=False, marked=True),
        PodSummary("released", ready=False, marked=True, released=True),
        PodSummary("given", ready=False, marked=True, released=True),
        PodSummary("leaving", ready=False, marked=True, leaving=True),
        PodSummary("deleted", ready=False, gone=True, marked=True),
    ]
    plan = plan_paused(summaries, 4, given_back=("given", "long-gone"))
    assert plan == ScalePlan(replicas=4, withdraw=("chosen", "released"),
                             given_back=("given",))
    assert draining_fields(summaries, plan, {"leaving": NOW - 30}, {}) == {
        "drainingReplicas": 1, "drainingSince": "1970-01-01T00:16:10Z"}
    # A node that could not be read may be emptied: its pods might be leaving.
    assert plan_paused(summaries, 4, ("given",), nodes_known=False).withdraw == ()

    # Resumed, the round sees the pods taken back serving and the given-back one out of the
    # count: at the size the pool had, it keeps every mark as it is (the leaving pod's run
    # goes on), and it does not take the given-back pod back.
    after = applied(summaries, plan)
    assert serving_replicas(after, 4, ("given",)) == 3
    again = plan_scale(after, 4, ("given",), 3, work(chosen=1, leaving=1), NOW)
    assert (again.drain, again.release, again.withdraw, again.replicas) == ((), (), (), 4)
    assert again.given_back == ("given",)


def test_nothing_is_released_while_the_queue_is_unreadable() -> None:
    summaries = pods("a", "b", "c", marked=("b",), unready=("b",))
    plan = plan_scale(summaries, 3, (), 1, None, NOW)
    assert (plan.release, plan.give_back, len(plan.drain), plan.replicas) == ((), (), 1, 3)


def test_nothing_is_withdrawn_while_the_queue_is_unreadable() -> None:
    """A drain request that cannot be cleared must not lose its mark (the pod would stay
    idle, counted as serving): a scale-up starts new pods instead."""
    summaries = pods("a", "b", "c", marked=("b", "c"), unready=("b", "c"))
    plan = plan_scale(summaries, 3, (), 3, None, NOW)
    assert (plan.withdraw, plan.start, plan.replicas) == ((), 2, 5)


def test_a_give_back_in_the_round_a_pod_is_asked_for_still_writes_the_deployment() -> None:
    """A released pod of a cordoned node gives its replica back as the load asks for one
    more pod: the count stays, the Deployment must still name the pod given back."""
    summaries = [PodSummary("serving"), PodSummary("new"),
                 PodSummary("leaving", ready=False, marked=True, released=True, leaving=True)]
    plan = plan_scale(summaries, 3, (), 3, {}, NOW, drains={"leaving": NOW - 100})
    assert (plan.replicas, plan.give_back, plan.start) == (3, ("leaving",), 1)
    assert plan.writes_deployment(3)
    assert not plan_scale(summaries[:2], 2, (), 2, {}, NOW).writes_deployment(2)


def test_a_starting_pod_holds_the_give_back() -> None:
    """The ReplicaSet removes unready pods first: while an unmarked pod is still starting
    (unready), lowering the count could remove it instead of the released one."""
    summaries = pods("a", "b", "c", released=("b",), unready=("b", "c"))
    assert plan_scale(summaries, 3, (), 2, work(a=1), NOW).give_back == ()
    late = {"b": NOW - DRAIN_READY_TIMEOUT_SECONDS}
    assert plan_scale(summaries, 3, (), 2, work(a=1), NOW, late).give_back == ("b",), (
        "a pod that never turns ready does not hold it forever")
    ready_b = pods("a", "b", released=("b",))
    assert plan_scale(ready_b, 2, (), 1, work(a=1), NOW, late).give_back == ("b",)


def replicaset_removes(summaries: list[PodSummary], count: int) -> list[str]:
    """The pods a ReplicaSet removes first: unready ones, then the lowest deletion cost."""
    def rank(p: PodSummary) -> tuple[bool, int, str]:
        return (p.ready, -2 if p.released else -1 if p.marked else 0, p.name)

    return [p.name for p in sorted(summaries, key=rank)[:count]]


def test_a_released_pod_that_took_a_run_goes_back_to_the_chosen_cost() -> None:
    """Pod a was released (-2000) idle, but claimed a run before its drain request reached
    its worker: it goes back to -1000, and only the next round gives back the replica of the
    idle released pod b, so the ReplicaSet removes b, not a."""
    summaries = pods("s1", "s2", "a", "b", released=("a", "b"), unready=("a", "b"))
    runs = {"s1": PodWork(2), "s2": PodWork(2), "a": PodWork(1, (NOW - 30,)), "b": PodWork(0)}
    plan = plan_scale(summaries, 4, (), 2, runs, NOW, {"a": NOW - 30, "b": NOW - 30})
    assert (plan.drain, plan.release, plan.give_back, plan.replicas) == (("a",), (), (), 4)
    after = applied(summaries, plan)
    assert [p.name for p in after if p.released] == ["b"]
    plan = plan_scale(after, 4, (), 2, runs, NOW, {"a": NOW - 30, "b": NOW - 30})
    assert (plan.drain, plan.give_back, plan.replicas) == ((), ("b",), 3)
    assert replicaset_removes(applied(after, plan), 4 - plan.replicas) == ["b"]


def test_a_released_pod_is_left_released_while_the_queue_is_unreadable() -> None:
    summaries = pods("a", "b", released=("b",), unready=("b",))
    assert plan_scale(summaries, 2, (), 1, None, NOW).drain == ()


def test_a_released_pod_the_replicaset_kept_is_deleted() -> None:
    before = pods("a", "b", "c", released=("b",), unready=("b", "c"))
    assert plan_scale(before, 2, ("b",), 2, work(a=1), NOW).delete == (), "not acted yet"
    other_removed = pods("a", "b", "c", released=("b",), unready=("b", "c"), gone=("c",))
    plan = plan_scale(other_removed, 2, ("b",), 2, work(a=1), NOW)
    assert (plan.delete, plan.replicas) == (("b",), 2)


def test_pods_not_created_yet_are_removed_by_not_creating_them() -> None:
    plan = plan_scale(pods("a", "b", "c"), 5, (), 2, work(a=1, b=1, c=1), NOW)
    assert (plan.drain, plan.replicas) == (("a",), 3)


def test_surge_pods_of_a_rollout_are_not_chosen() -> None:
    six = pods("a", "b", "c", "d", "e", "f")
    assert plan_scale(six, 5, (), 5, {}, NOW).release == ()
    plan = plan_scale(six, 5, (), 4, {}, NOW)
    assert (len(plan.release), plan.replicas) == (1, 5)


def test_pods_being_deleted_are_neither_counted_nor_chosen() -> None:
    plan = plan_scale(pods("a", "b", "c", gone=("a",)), 3, (), 1, work(b=1, c=2), NOW)
    assert plan.drain == ("b",)


def applied(summaries: list[PodSummary], plan: ScalePlan) -> list[PodSummary]:
    out = []
    for p in summaries:
        marked = (p.marked and p.name not in plan.withdraw) or p.name in (
            *plan.drain, *plan.release)
        released = (p.released and p.name not in (*plan.withdraw, *plan.drain)) or (
            p.name in plan.release)
        out.append(replace(p, marked=marked, released=released))
    return out


@given(
    st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["", "m", "r"]), st.booleans(),
                       st.booleans()), max_size=8),
    st.integers(0, 10),
    st.integers(0, 10),
    st.sets(st.integers(0, 7)),
)
def test_plan_invariants(spec: list[tuple[int, str, bool, bool]], replicas: int, target: int,
                         back: set[int]) -> None:
    summaries = [
        PodSummary(f"p{i}", ready=ready, gone=gone, marked=bool(mark), released=mark == "r")
        for i, (_, mark, ready, gone) in enumerate(spec)
    ]
    busy = {f"p{i}": PodWork(n) for i, (n, *_) in enumerate(spec)}
    given = [f"p{i}" for i in back]
    plan = plan_scale(summaries, replicas, given, target, busy, NOW)
    live = {p.name for p in summaries if not p.gone}

    # never the replica of a pod with a run in flight; only live pods are touched
    assert all(busy[n].in_flight == 0 for n in plan.give_back)
    assert all(busy[n].in_flight == 0 for n in plan.release)
    assert set(plan.drain) | set(plan.release) | set(plan.withdraw) <= live
    # a pod whose replica went stays named while it is listed (terminating)
    assert set(plan.given_back) <= {p.name for p in summaries}
    # the serving replicas reach the target
    after = applied(summaries, plan)
    assert serving_replicas(after, plan.replicas, plan.given_back) == target
    # pods start only once every drain is withdrawn
    if plan.start:
        assert not_serving_pods(after, plan.given_back) == []
    # applied, the plan is stable: no other pod is chosen and none withdrawn
    again = plan_scale(after, plan.replicas, plan.given_back, target, busy, NOW)
    assert (again.drain, again.withdraw, again.start) == ((), (), 0)


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


@pytest.mark.parametrize("length", [20, 47, 50, 57, 58, 63])
def test_stale_drains_of_a_long_named_pools_pods_are_found(length: int) -> None:
    """Kubernetes cuts the part of a pod's name before its random five to 58 characters:
    from about 47 characters of pool name, the pods' names no longer hold the whole
    `<pool>-<hash>-`."""
    pool = ("p" * length)[:length]
    base = f"{pool}-7c9d5f8b6d-"[:58]
    gone, other = f"{base}bbbbb", f"{'q' * length}-7c9d5f8b6d-"[:58] + "ccccc"
    stale = stale_drains({gone: 100.0, other: 100.0}, set(), pool, now=1000.0, grace=30)
    assert stale == [gone]


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


def test_a_queue_the_runs_about_to_end_take_is_stable_not_cooling_down() -> None:
    settled = ScalingHistory(since=0.0)
    load = QueueLoad(queued=1, in_flight=4, run_ages=(3.0,) * 4)
    assert condition(load, 2, settled, now=500.0) == ("True", "Stable")
    decision = decide(POLICY, load, 2, settled, 500.0)
    assert "runs about to end" in scaling_condition(POLICY, load, decision).message
    assert condition(replace(load, run_ages=()), 2, settled, now=500.0) == ("True", "ScaledUp")


def test_messages_of_a_held_size_do_not_move_with_the_backlog() -> None:
    def message(queued: int) -> str:
        load = QueueLoad(queued=queued)
        decision = decide(POLICY, load, 2, ScalingHistory(since=0.0), 100.0)
        return scaling_condition(POLICY, load, decision).message

    assert message(3) == message(4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.lists(st.integers(0, 9), max_size=4),
                          st.integers(0, 3), st.integers(0, 2)), min_size=1, max_size=25))
def test_rounds_never_remove_a_pod_with_a_run_in_flight(
    rounds: list[tuple[int, list[int], int, int]],
) -> None:
    """Round after round, with a ReplicaSet that removes the lowest-cost unready pod first
    and creates the missing ones (ready a round later), runs that end, new runs on serving
    pods, and runs that the pods released this round claim before their first drain request
    reaches Redis: no pod holding a run is ever removed, and the serving replicas follow each
    round's target."""
    live: dict[str, PodSummary] = {}
    runs: dict[str, int] = {}
    replicas, given_back, serial = 0, (), 0
    for target, finished, started, claimed_late in rounds:
        for index in finished:
            names = sorted(n for n, count in runs.items() if count)
            if names:
                runs[names[index % len(names)]] -= 1
        serving_pods = sorted(n for n, p in live.items() if not p.marked and p.ready)
        for index in range(started):
            if serving_pods:
                runs[serving_pods[index % len(serving_pods)]] += 1
        pods = list(live.values())
        busy = {n: PodWork(c) for n, c in runs.items()}
        plan = plan_scale(pods, replicas, given_back, target, busy, NOW)
        assert serving_replicas(applied(pods, plan), plan.replicas, plan.given_back) == target
        live = {p.name: p for p in applied(pods, plan)}
        for name in plan.delete:
            assert runs[name] == 0
            del live[name]
        replicas, given_back = plan.replicas, plan.given_back
        # a worker claims until its drain request reaches Redis, after the round read its work
        fresh = [n for n in plan.release if not any(p.name == n and p.marked for p in pods)]
        for index in range(claimed_late if fresh else 0):
            runs[fresh[index % len(fresh)]] += 1
        # the ReplicaSet
        while len(live) > replicas:
            ranked = sorted(live.values(), key=lambda p: (p.ready, 0 if not p.marked else (
                -2 if p.released else -1), p.name))
            victim = ranked[0].name
            assert runs[victim] == 0, f"removed {victim} with a run in flight"
            del live[victim]
        live = {n: replace(p, ready=not p.marked) for n, p in live.items()}
        while len(live) < replicas:
            serial += 1
            name = f"p{serial}"
            live[name] = PodSummary(name, ready=False)
            runs[name] = 0


def test_a_released_pod_still_ready_waits_while_a_busy_pod_drains_unready() -> None:
    """The 60 s fallback: released pod x still reads Ready long after its drain request. The
    busy pod a, chosen for removal, is unready while it drains, and the ReplicaSet removes
    unready pods before ready ones whatever their cost: giving x's replica back now would
    remove a. It waits until no other pod is unready."""
    summaries = [PodSummary("a", ready=False, marked=True),
                 PodSummary("x", marked=True, released=True), PodSummary("b")]
    runs = {"a": PodWork(1, (NOW - 300,)), "b": PodWork(2, (NOW - 5, NOW - 5))}
    late = {"a": NOW - 200, "x": NOW - DRAIN_READY_TIMEOUT_SECONDS - 1}
    plan = plan_scale(summaries, 3, (), 1, runs, NOW, late, 1)
    assert (plan.give_back, plan.replicas) == ((), 3)
    assert not [n for n in replicaset_removes(applied(summaries, plan), 3 - plan.replicas)
                if runs.get(n, PodWork()).in_flight]
    a_done = [replace(summaries[0], released=True), *summaries[1:]]
    plan = plan_scale(a_done, 3, (), 1, {"b": runs["b"]}, NOW, late, 1)
    assert (sorted(plan.give_back), plan.replicas) == (["a", "x"], 1)
    assert sorted(replicaset_removes(applied(a_done, plan), 2)) == ["a", "x"]


def deleted(name: str, *, at: float = NOW - 5, cost: str = "-1000") -> PodSummary:
    """A marked pod deleted at `at` (by hand, say), finishing its runs while it terminates."""
    return PodSummary(name, ready=False, gone=True, marked=True, released=cost == "-2000",
                      stopping_since=at)


def test_a_draining_pod_deleted_by_hand_gives_its_replica_back_with_it() -> None:
    """Busy draining pod d is deleted: the ReplicaSet started r in its place. The replica d
    held goes now (named given back, so once only), and the ReplicaSet removes r, not a pod
    with a run; the plan drains nobody."""
    summaries = [PodSummary("s"), deleted("d"), PodSummary("r", ready=False, created=NOW - 4)]
    runs = {"s": PodWork(1, (NOW - 30,)), "d": PodWork(1, (NOW - 300,))}
    assert lost_replicas(summaries, (), runs) == ("d",)
    serving = serving_replicas(summaries, 2, (), ("d",))
    assert serving == 1
    plan = plan_scale(summaries, 2, (), serving, runs, NOW, {"d": NOW - 100}, serving)
    assert (plan.replicas, plan.lost, plan.given_back, plan.drain, plan.release) == (
        1, ("d",), ("d",), (), ())
    assert plan.writes_deployment(2)
    live = [p for p in summaries if not p.gone]
    assert replicaset_removes(live, len(live) - plan.replicas) == ["r"]
    again = plan_scale(summaries, 1, plan.given_back, 1, runs, NOW, {"d": NOW - 100}, 1)
    assert (again.lost, again.given_back, again.replicas) == ((), ("d",), 1), "once only"


def test_a_scale_up_in_the_round_a_draining_pod_is_found_deleted_keeps_its_replacement(
) -> None:
    """Busy draining d was deleted by hand and r started in its place; the same round needs
    a third serving pod: r is that pod. The count stays, nothing new starts."""
    summaries = [PodSummary("a"), PodSummary("b"), deleted("d"),
                 PodSummary("r", ready=False, created=NOW - 4)]
    runs = work(a=2, b=2, d=1)
    plan = plan_scale(summaries, 3, (), 3, runs, NOW)
    assert (plan.replicas, plan.lost, plan.start, plan.replacements_kept) == (3, ("d",), 0, 1)
    steady = plan_scale(summaries, 3, (), 2, runs, NOW)
    assert (steady.replicas, steady.start, steady.replacements_kept) == (2, 0, 0)
    more = plan_scale(summaries, 3, (), 4, runs, NOW)
    assert (more.replicas, more.start, more.replacements_kept) == (4, 1, 1)


def test_a_deleted_pods_replica_stays_while_a_pod_with_a_run_could_go_instead() -> None:
    runs = {"s": PodWork(1), "d": PodWork(1), "busy": PodWork(2)}
    replacement = PodSummary("r", ready=False, created=NOW - 4)
    draining_busy = [PodSummary("s"), deleted("d"), replacement,
                     PodSummary("busy", ready=False, marked=True)]
    assert lost_replicas(draining_busy, (), runs) == ()
    assert lost_replicas([PodSummary("s"), deleted("d")], (), runs) == (), "no replacement yet"
    older = [PodSummary("s"), deleted("d"), replace(replacement, created=NOW - 60)]
    assert lost_replicas(older, (), runs) == (), "a pod from before the deletion"
    given = [PodSummary("s"), deleted("d", cost="-2000"), replacement]
    assert lost_replicas(given, ("d",), runs) == (), "its replica went already"
    assert lost_replicas([PodSummary("s"), deleted("d"), replacement], (), None) == ()


def test_a_pod_given_back_stays_named_while_it_terminates() -> None:
    """The ReplicaSet deletes the pod whose replica was given back; until it is gone from the
    listing, a later write keeps its name, so it never passes for a deleted pod whose replica
    is still held."""
    summaries = [PodSummary("s"), deleted("g", cost="-2000"),
                 PodSummary("new", ready=False, created=NOW - 1)]
    plan = plan_scale(summaries, 2, ("g",), 2, work(s=1), NOW)
    assert (plan.given_back, plan.lost, plan.delete) == (("g",), (), ())


def test_draining_fields_are_not_written_without_the_drain_requests() -> None:
    summaries = [PodSummary("a"), PodSummary("b", ready=False, marked=True)]
    assert draining_fields(summaries, ScalePlan(replicas=2), None, {}) == {}


def test_a_pool_awake_with_no_serving_pod_does_not_read_scaled_to_zero() -> None:
    """Its only pod leaves with its node: it starts one for its queue, and says so."""
    policy = ScalingPolicy(min_replicas=0, max_replicas=3, activation_depth=5)
    load = QueueLoad(queued=3)
    awake = decide(policy, load, 0, ScalingHistory(since=0.0, replicas=1), 100.0)
    update = scaling_condition(policy, load, awake)
    assert (update.reason, awake.replicas) == ("ScaledUp", 1)
    asleep = decide(policy, load, 0, ScalingHistory(since=0.0, replicas=0), 100.0)
    assert "scaled to zero" in scaling_condition(policy, load, asleep).message


def test_ready_of_a_pool_that_wants_no_serving_pod() -> None:
    policy = ScalingPolicy(min_replicas=0, max_replicas=3, activation_depth=5)
    update = zero_ready(policy, 2)
    assert (update.type, update.status, update.reason) == ("Ready", "True", "ScaledToZero")
    assert update.message == ("no worker wanted; 2 pods finish their runs before they go; "
                              "the pool wakes when more than 5 tasks are queued")
    assert zero_ready(replace(policy, activation_depth=0), None).message == (
        "no worker wanted; the pool wakes when tasks arrive")


def scaled(replicas: int, written: str | None, *fields: dict[str, object]) -> dict[str, object]:
    annotations = {} if written is None else {REPLICAS_ANNOTATION: written}
    return {"metadata": {"annotations": annotations, "managedFields": list(fields)},
            "spec": {"replicas": replicas}}


def owns_replicas(manager: str, at: str) -> dict[str, object]:
    return {"manager": manager, "operation": "Update", "time": at,
            "fieldsV1": {"f:spec": {"f:replicas": {}}}}


def test_replicas_written_outside_the_operator_and_by_whom() -> None:
    hpa = owns_replicas("kube-controller-manager", "2025-01-01T00:10:00Z")
    kubectl = owns_replicas("kubectl", "2025-01-01T00:05:00Z")
    ours = owns_replicas("OpenAPI-Generator", "2025-01-01T00:01:00Z")
    assert replicas_changed_outside(scaled(4, "4", hpa)) is None
    assert replicas_changed_outside(scaled(4, None, hpa)) is None, "nothing written yet"
    assert replicas_changed_outside(scaled(6, "4", kubectl, hpa, ours)) == OutsideChange(
        6, 4, "kube-controller-manager")
    change = replicas_changed_outside(scaled(1, "4"))
    assert change == OutsideChange(1, 4, None)
    assert change.message(4).startswith(
        "the Deployment's replicas were changed to 1, outside the operator (it had set 4): "
        "the operator sizes the pool itself and sets 4")


def test_a_count_the_operator_wrote_last_is_not_someone_elses() -> None:
    """Downgraded to an operator that keeps no agentpool.dev/replicas, which changed the
    count, and upgraded back: the managedFields say the operator wrote it last."""
    older = owns_replicas("OpenAPI-Generator", "2025-01-01T00:20:00Z")
    assert replicas_changed_outside(scaled(3, "2", older)) is None
    kubectl = owns_replicas("kubectl", "2025-01-01T00:05:00Z")
    assert replicas_changed_outside(scaled(3, "2", kubectl, older)) is None
    ours = owns_replicas("agentpool-operator", "2025-01-01T00:20:00Z")
    assert replicas_changed_outside(scaled(3, "2", ours)) is None
    later = owns_replicas("kubectl", "2025-01-01T00:30:00Z")
    assert replicas_changed_outside(scaled(3, "2", later, older)) == OutsideChange(
        3, 2, "kubectl")


def test_a_count_kept_from_the_other_writer_is_not_said_to_be_set() -> None:
    """The operator's scale-down waits for its window: it keeps the other writer's count."""
    message = OutsideChange(4, 2, "kubectl").message(4)
    assert "keeps 4 for now and sizes the pool by its queue from here" in message
    assert "sets 4" not in message


def test_a_decision_of_zero_or_back_is_recorded_without_a_change_of_count() -> None:
    def annotation(replicas: int | None) -> str:
        return json.dumps(ScalingHistory(since=1.0, replicas=replicas).to_json())

    assert sleep_unrecorded(annotation(1), ScalingHistory(replicas=0))
    assert sleep_unrecorded(annotation(0), ScalingHistory(replicas=2))
    assert sleep_unrecorded(None, ScalingHistory(replicas=0))
    assert sleep_unrecorded("not json", ScalingHistory(replicas=0))
    assert not sleep_unrecorded(annotation(0), ScalingHistory(replicas=0))
    assert not sleep_unrecorded(annotation(3), ScalingHistory(replicas=2)), "awake either way"
    assert not sleep_unrecorded(None, ScalingHistory(replicas=2))
    assert not sleep_unrecorded(annotation(None), ScalingHistory(replicas=None))
