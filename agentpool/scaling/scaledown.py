"""Which pods go when a pool shrinks: a pure decision.

The ReplicaSet would pick blindly; we pick idle workers first, mark them for deletion with
``controller.kubernetes.io/pod-deletion-cost`` and ask them to drain, so a scale-down never
interrupts a busy pod while an idle one could go instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
CHOSEN_COST = "-1000"
"""Lower cost is deleted first; pods we did not choose keep the default of 0."""


@dataclass(frozen=True)
class PodLoad:
    pod: str
    in_flight: int = 0
    """Tasks its workers hold (0 when no worker of the pod has registered yet)."""
    ready: bool = True
    deleting: bool = False
    draining: bool = False


def pod_loads(pods: Sequence[tuple[str, bool, bool]], in_flight: Mapping[str, int],
              draining: Sequence[str] = ()) -> list[PodLoad]:
    """Join pods (name, ready, deleting) with the in-flight counts Redis reports per pod."""
    return [
        PodLoad(name, in_flight.get(name, 0), ready, deleting, name in draining)
        for name, ready, deleting in pods
    ]


def choose_pods_to_remove(loads: Sequence[PodLoad], count: int) -> list[str]:
    """Pick `count` pods: idle before busy, then the least busy; already-draining or unready
    pods before ready ones at equal load. Pods already being deleted are not candidates."""
    if count <= 0:
        return []
    candidates = [p for p in loads if not p.deleting]
    ranked = sorted(
        candidates,
        key=lambda p: (p.in_flight > 0, p.in_flight, not p.draining, p.ready, p.pod),
    )
    return [p.pod for p in ranked[:count]]


def interrupted_if_removed(loads: Sequence[PodLoad], chosen: Sequence[str]) -> int:
    """Tasks held by the chosen pods: they get `drainSeconds` to finish, the rest requeues."""
    picked = set(chosen)
    return sum(p.in_flight for p in loads if p.pod in picked)
