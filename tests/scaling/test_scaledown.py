from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agentpool.scaling.scaledown import (
    DrainPlan,
    PodLoad,
    choose_pods_to_remove,
    interrupted_if_removed,
    plan_drains,
    pod_loads,
    serving_view,
)


def test_idle_pods_go_before_busy_ones() -> None:
    loads = [PodLoad("a", 2), PodLoad("b", 0), PodLoad("c", 1), PodLoad("d", 0), PodLoad("e", 3)]
    chosen = choose_pods_to_remove(loads, 2)
    assert sorted(chosen) == ["b", "d"]
    assert interrupted_if_removed(loads, chosen) == 0


def test_least_busy_goes_when_no_idle_pod_is_left() -> None:
    loads = [PodLoad("a", 2), PodLoad("b", 0), PodLoad("c", 1)]
    assert choose_pods_to_remove(loads, 2) == ["b", "c"]


def test_pods_being_deleted_are_not_counted_as_candidates() -> None:
    loads = [PodLoad("a", 0, deleting=True), PodLoad("b", 1), PodLoad("c", 0)]
    assert choose_pods_to_remove(loads, 2) == ["c", "b"]


def test_draining_and_unready_pods_go_first_at_equal_load() -> None:
    loads = [PodLoad("a", 0), PodLoad("b", 0, ready=False), PodLoad("c", 0, draining=True)]
    assert choose_pods_to_remove(loads, 2) == ["c", "b"]


def test_nothing_to_remove() -> None:
    assert choose_pods_to_remove([PodLoad("a")], 0) == []


def test_pod_loads_joins_kubernetes_and_redis_views() -> None:
    loads = pod_loads([("a", True, False), ("b", False, True)], {"a": 3}, draining=["b"],
                      run_ages={"a": [5.0, 1.0, 9.0]})
    assert loads == [
        PodLoad("a", 3, True, False, False, (5.0, 1.0, 9.0)),
        PodLoad("b", 0, False, True, True),
    ]


def test_at_equal_runs_the_pod_with_the_oldest_run_goes_first() -> None:
    loads = [
        PodLoad("a", 2, run_ages=(10.0, 30.0)),
        PodLoad("b", 1, run_ages=(5.0,)),
        PodLoad("c", 2, run_ages=(400.0, 1.0)),
        PodLoad("d", 1, run_ages=(50.0,)),
    ]
    assert choose_pods_to_remove(loads, 4) == ["d", "b", "c", "a"]


def test_the_policy_sees_serving_pods_and_their_runs_only() -> None:
    loads = [
        PodLoad("a", 3), PodLoad("b", 1, draining=True), PodLoad("c", 0),
        PodLoad("d", 2, deleting=True),
    ]
    view = serving_view(loads)
    assert (view.serving, view.in_flight, view.draining) == (2, 3, 1)


def test_a_scale_down_drains_busy_pods_and_releases_idle_ones_at_once() -> None:
    loads = [PodLoad("a", 3), PodLoad("b", 0), PodLoad("c", 1), PodLoad("d", 2)]
    plan = plan_drains(loads, 1)
    assert plan == DrainPlan(drain=("b", "c", "d"), release=("b",))


def test_a_drained_pod_is_released_once_its_last_run_ended() -> None:
    loads = [PodLoad("a", 1), PodLoad("b", 0, draining=True), PodLoad("c", 2, draining=True)]
    assert plan_drains(loads, 1) == DrainPlan(release=("b",))


def test_a_scale_up_withdraws_drains_before_starting_pods() -> None:
    loads = [
        PodLoad("a", 4), PodLoad("b", 1, draining=True, run_ages=(30.0,)),
        PodLoad("c", 2, draining=True, run_ages=(5.0, 9.0)),
    ]
    assert plan_drains(loads, 2) == DrainPlan(withdraw=("c",))
    assert plan_drains(loads, 5) == DrainPlan(withdraw=("c", "b"), start=2)


@given(
    st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=12),
    st.integers(min_value=0, max_value=12),
)
def test_never_a_busy_pod_while_an_idle_one_is_left(loads_in: list[int], count: int) -> None:
    loads = [PodLoad(f"p{i}", n) for i, n in enumerate(loads_in)]
    chosen = set(choose_pods_to_remove(loads, count))
    assert len(chosen) == min(count, len(loads))
    idle_left = [p for p in loads if p.in_flight == 0 and p.pod not in chosen]
    busy_chosen = [p for p in loads if p.in_flight > 0 and p.pod in chosen]
    assert not (idle_left and busy_chosen)


pods = st.lists(
    st.builds(
        PodLoad,
        pod=st.text("abcdefgh", min_size=1, max_size=3),
        in_flight=st.integers(0, 4),
        draining=st.booleans(),
        deleting=st.booleans(),
    ),
    max_size=10,
    unique_by=lambda p: p.pod,
)


@given(pods, st.integers(min_value=0, max_value=12))
def test_property_never_releases_the_replica_of_a_pod_with_a_run_in_flight(
    loads: list[PodLoad], target: int
) -> None:
    plan = plan_drains(loads, target)
    by_name = {p.pod: p for p in loads}
    assert all(by_name[name].in_flight == 0 for name in plan.release)
    assert not set(plan.release) & set(plan.withdraw)


@given(pods, st.integers(min_value=0, max_value=12))
def test_property_the_plan_reaches_the_target_and_starts_only_when_nothing_drains(
    loads: list[PodLoad], target: int
) -> None:
    plan = plan_drains(loads, target)
    view = serving_view(loads)
    serving_after = view.serving - len(plan.drain) + len(plan.withdraw) + plan.start
    assert serving_after == target
    assert plan.start == 0 or len(plan.withdraw) == view.draining
    live_after = view.serving + view.draining + plan.start - len(plan.release)
    assert live_after <= max(view.serving + view.draining, target)


def test_drained_idle_pods_keep_their_replicas_up_to_keep() -> None:
    loads = [PodLoad("a", 3), PodLoad("b", 0), PodLoad("c", 0), PodLoad("d", 0, draining=True)]
    assert plan_drains(loads, 1, keep=3) == DrainPlan(drain=("b", "c"), release=("c",))
    assert plan_drains(loads, 1, keep=4) == DrainPlan(drain=("b", "c"))
    assert plan_drains(loads, 1) == DrainPlan(drain=("b", "c"), release=("d", "b", "c"))


def test_a_kept_drained_pod_is_taken_back_instead_of_a_new_one() -> None:
    loads = [PodLoad("a", 4), PodLoad("b", 0, draining=True)]
    assert plan_drains(loads, 1, keep=2) == DrainPlan()
    assert plan_drains(loads, 2, keep=2) == DrainPlan(withdraw=("b",))


@given(pods, st.integers(min_value=0, max_value=12), st.integers(min_value=0, max_value=12))
def test_property_keep_only_holds_back_idle_releases(
    loads: list[PodLoad], target: int, keep: int
) -> None:
    plain = plan_drains(loads, target)
    plan = plan_drains(loads, target, keep)
    assert (plan.drain, plan.withdraw, plan.start) == (plain.drain, plain.withdraw, plain.start)
    assert set(plan.release) <= set(plain.release)
    view = serving_view(loads)
    live_after = view.serving + view.draining + plan.start - len(plan.release)
    live_before = view.serving + view.draining + plan.start
    assert live_after >= min(max(keep, target), live_before)
    if len(plan.release) < len(plain.release):
        assert live_after == min(max(keep, target), live_before)
