"""Which pods go when a pool shrinks, and which come back when it grows: pure decisions.

The ReplicaSet would pick blindly; we pick idle workers first, mark them for deletion with
``controller.kubernetes.io/pod-deletion-cost`` and ask them to drain. A scale-down never
interrupts a run: a busy pod chosen for removal stops claiming and keeps its replica until
its runs end (runs are bounded by taskTimeoutSeconds), and only then does its replica go.
A draining pod is neither capacity nor a candidate to remove again; when the pool grows while
pods drain, the drains are withdrawn before any new pod is started (a pod that is already
running serves at once, a new one after its start-up).

Whom to drain when no pod is idle: the pod expected to empty first. Fewest runs first (a pod
is empty only once its last run ends); at equal runs, the pod whose oldest run has gone on
longest, as no run outlives taskTimeoutSeconds. On the shipped long-run traces the order
among equal counts moves drained pods' replica-seconds by 1-3 %, and oldest-first was the
cheapest of the rules tried (see bench/simulate.md); the count of runs is what matters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
CHOSEN_COST = "-1000"
"""Lower cost is deleted first; pods we did not choose keep the default of 0."""
RELEASED_COST = "-2000"
"""A chosen pod whose runs ended: lower still, so that the ReplicaSet, which sees every
draining pod unready, removes it and not a pod that still finishes its runs."""


@dataclass(frozen=True)
class PodLoad:
    pod: str
    in_flight: int = 0
    """Tasks its workers hold (0 when no worker of the pod has registered yet)."""
    ready: bool = True
    deleting: bool = False
    draining: bool = False
    run_ages: tuple[float, ...] = ()
    """Seconds each of its runs has been going, as its workers last reported (may be fewer
    than `in_flight` when a worker does not report them)."""
    leaving: bool = False
    """Draining because its node is being emptied: never taken back, never kept as a spare."""

    @property
    def oldest_run(self) -> float:
        return max(self.run_ages, default=0.0)


def pod_loads(pods: Sequence[tuple[str, bool, bool]], in_flight: Mapping[str, int],
              draining: Sequence[str] = (),
              run_ages: Mapping[str, Sequence[float]] | None = None) -> list[PodLoad]:
    """Join pods (name, ready, deleting) with the in-flight counts (and run ages) Redis
    reports per pod."""
    ages = run_ages or {}
    return [
        PodLoad(name, in_flight.get(name, 0), ready, deleting, name in draining,
                tuple(ages.get(name, ())))
        for name, ready, deleting in pods
    ]


def removal_rank(pod: PodLoad) -> tuple[bool, int, float, bool, bool, str]:
    """Sort key: the first pods go first. Idle before busy, then fewest runs, then the
    oldest run; at equal load already-draining or unready pods first."""
    return (pod.in_flight > 0, pod.in_flight, -pod.oldest_run, not pod.draining, pod.ready,
            pod.pod)


def choose_pods_to_remove(loads: Sequence[PodLoad], count: int) -> list[str]:
    """Pick `count` pods by `removal_rank`. Pods already being deleted are not candidates."""
    if count <= 0:
        return []
    candidates = [p for p in loads if not p.deleting]
    return [p.pod for p in sorted(candidates, key=removal_rank)[:count]]


def interrupted_if_removed(loads: Sequence[PodLoad], chosen: Sequence[str]) -> int:
    """Tasks held by the chosen pods: they finish before the pod's replica goes."""
    picked = set(chosen)
    return sum(p.in_flight for p in loads if p.pod in picked)


@dataclass(frozen=True)
class ServingView:
    """The pool as the scaling policy must see it while pods drain."""

    serving: int
    """Pods that take work: live, not draining."""
    in_flight: int
    """Tasks running on serving pods; the runs of draining pods need no capacity."""
    draining: int
    draining_runs: int = 0
    """Tasks running on draining pods."""


def serving_view(loads: Sequence[PodLoad]) -> ServingView:
    live = [p for p in loads if not p.deleting]
    serving = [p for p in live if not p.draining]
    return ServingView(
        serving=len(serving),
        in_flight=sum(p.in_flight for p in serving),
        draining=len(live) - len(serving),
        draining_runs=sum(p.in_flight for p in live if p.draining),
    )


@dataclass(frozen=True)
class DrainPlan:
    """What moves the pool's serving pods to a target count."""

    drain: tuple[str, ...] = ()
    """Serving pods that stop claiming and leave once their runs end."""
    withdraw: tuple[str, ...] = ()
    """Draining pods taken back into service instead of starting new pods."""
    start: int = 0
    """New pods still needed after the withdrawals."""
    release: tuple[str, ...] = ()
    """Draining pods with no run left (drained now, chosen idle, or leaving with their node):
    their replicas go."""


def plan_drains(loads: Sequence[PodLoad], target: int, keep: int | None = None, *,
                may_withdraw: bool = True) -> DrainPlan:
    """Move the serving pods to `target`: drain (idle first, by `removal_rank`), or withdraw
    drains (the pods that would have stayed longest first: a busy draining pod keeps its replica
    until its runs end anyway, so taking it back adds no pod, while an idle one's replica can
    go; measured against taking back the pods with the most free slots first in
    bench/simulate.md) and start the rest; release the
    replica of every draining pod that holds no run, except as many as it takes to keep
    `keep` live pods (default `target`): those wait, drained, to be taken back. Pods leaving
    with their node are neither taken back nor kept, nor is any pod when not `may_withdraw`
    (its drain request could not be cleared)."""
    live = [p for p in loads if not p.deleting]
    serving = [p for p in live if not p.draining]
    draining = [p for p in live if p.draining]
    drain: list[str] = []
    withdraw: list[str] = []
    start = 0
    if target < len(serving):
        drain = choose_pods_to_remove(serving, len(serving) - target)
    elif target > len(serving):
        returnable = [p for p in draining if not p.leaving and may_withdraw]
        longest_first = sorted(returnable, key=removal_rank, reverse=True)
        withdraw = [p.pod for p in longest_first[: target - len(serving)]]
        start = target - len(serving) - len(withdraw)
    chosen = set(drain)
    back = set(withdraw)
    gone = [p.pod for p in draining if p.in_flight == 0 and p.leaving]
    release = [p.pod for p in draining
               if p.in_flight == 0 and p.pod not in back and not p.leaving]
    release += [p.pod for p in serving if p.pod in chosen and p.in_flight == 0]
    serving_after = len(serving) - len(drain) + len(withdraw) + start
    staying = (serving_after + len(live) - len(serving) - len(withdraw) + len(drain)
               - len(release) - len(gone))
    spare = max(0, max(target, keep or 0) - staying)
    return DrainPlan(tuple(drain), tuple(withdraw), start, tuple(gone + release[spare:]))
