from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agentpool.scaling.scaledown import (
    PodLoad,
    choose_pods_to_remove,
    interrupted_if_removed,
    pod_loads,
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
    loads = pod_loads([("a", True, False), ("b", False, True)], {"a": 3}, draining=["b"])
    assert loads == [PodLoad("a", 3, True, False, False), PodLoad("b", 0, False, True, True)]


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
