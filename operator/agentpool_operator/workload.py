"""Why a pool's pods do not come up, from its Deployment and pods: pure decisions.

A pool that wants ten pods and gets two still serves, so these are `Degraded` problems, not
reasons to call it unready. Without them the pool's status shows only that ready replicas
lag behind desired ones, and the reason sits in the events of a ReplicaSet or of a pod
nobody looks at: a namespace quota or the Pod Security admission refusing pods, an image
that cannot be pulled, a container that crashes at start, pods no node can take.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .status import Problem

STUCK_CONTAINER_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "CrashLoopBackOff", "RunContainerError",
})
"""Waiting reasons a container does not leave without a change to its pod or image."""
CRASH_LOOP_RESTARTS = 2
"""Restarts after which a container that crashed is still in a crash loop while it runs
between two back-offs, until it turns ready: the kubelet's back-off begins at the second."""
CRASH_LOOP_MEMORY_SECONDS = 600.0
"""How long a crash is remembered: the kubelet forgets its back-off after ten minutes."""
CRASH_LOOP_RUN_SECONDS = 60.0
"""A container running longer than this since its last crash is no longer taken for one
between two back-offs (unready for another reason: a slow start, a drain)."""
UNSCHEDULABLE_GRACE_SECONDS = 300.0
"""How long a pod may wait for a node before it is reported, by default: a node autoscaler
adding a node takes a few minutes, and a pending pod is normal meanwhile (a cluster without
one lowers it, `OperatorSettings.unschedulable_grace_seconds`)."""

PODS_NOT_CREATED = "PodsNotCreated"
ROLLOUT_STALLED = "RolloutStalled"
PODS_FAILING = "PodsFailing"
PODS_UNSCHEDULABLE = "PodsUnschedulable"


def workload_problems(deployment: Mapping[str, Any] | None,
                      pods: Sequence[Mapping[str, Any]] | None,
                      now: datetime,
                      unschedulable_grace: float = UNSCHEDULABLE_GRACE_SECONDS) -> list[Problem]:
    """The problems of the pool's Deployment and pods that keep replicas from serving."""
    problems = _deployment_problems(deployment)
    live = [p for p in pods or () if not (p.get("metadata") or {}).get("deletionTimestamp")]
    stuck = _group(_stuck_containers(live, now))
    if stuck:
        problems.append(Problem(PODS_FAILING, "; ".join(stuck)))
    unschedulable = _group(_unschedulable(live, now, unschedulable_grace))
    if unschedulable:
        problems.append(Problem(PODS_UNSCHEDULABLE, "; ".join(unschedulable)))
    return problems


def _deployment_problems(deployment: Mapping[str, Any] | None) -> list[Problem]:
    conditions = {
        c.get("type"): c for c in ((deployment or {}).get("status") or {}).get("conditions") or ()
    }
    problems = []
    failure = conditions.get("ReplicaFailure")
    if failure and failure.get("status") == "True":
        problems.append(Problem(
            PODS_NOT_CREATED, f"pods cannot be created: {_text(failure)}"))
    progress = conditions.get("Progressing")
    if (progress and progress.get("status") == "False"
            and progress.get("reason") == "ProgressDeadlineExceeded"):
        problems.append(Problem(ROLLOUT_STALLED, f"the rollout stalled: {_text(progress)}"))
    return problems


def _stuck_containers(pods: Iterable[Mapping[str, Any]],
                      now: datetime) -> Iterable[tuple[str, str]]:
    """(reason, detail) for each pod with a container waiting for good, one per pod.

    A crash-looping container runs a few seconds between two back-offs: it is still in its
    loop then (not ready, its last run a recent crash), or the problem would come and go
    with each restart, and an event with it.
    """
    for pod in pods:
        status = pod.get("status") or {}
        containers = [*(status.get("initContainerStatuses") or ()),
                      *(status.get("containerStatuses") or ())]
        for container in containers:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in STUCK_CONTAINER_REASONS:
                yield reason, _container_detail(container, waiting)
                break
            if _between_crashes(container, now):
                yield "CrashLoopBackOff", _container_detail(
                    container, {"reason": "CrashLoopBackOff"})
                break


def _between_crashes(container: Mapping[str, Any], now: datetime) -> bool:
    """Crashed again a moment ago (terminated, about to back off), or running a few seconds
    after a recent crash of a container that has crashed before, not ready yet."""
    state = container.get("state") or {}
    restarts = int(container.get("restartCount") or 0)
    ended = state.get("terminated") or {}
    if ended:
        return ended.get("exitCode", 0) != 0 and restarts >= CRASH_LOOP_RESTARTS - 1
    crashed = (container.get("lastState") or {}).get("terminated") or {}
    running = state.get("running") or {}
    return (
        bool(running)
        and not container.get("ready")
        and restarts >= CRASH_LOOP_RESTARTS
        and crashed.get("exitCode", 0) != 0
        and "finishedAt" in crashed
        and _seconds_since(crashed["finishedAt"], now) < CRASH_LOOP_MEMORY_SECONDS
        and "startedAt" in running
        and _seconds_since(running["startedAt"], now) < CRASH_LOOP_RUN_SECONDS
    )


def _last_crash(container: Mapping[str, Any]) -> Mapping[str, Any]:
    state = container.get("state") or {}
    return state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}


def _container_detail(container: Mapping[str, Any], waiting: Mapping[str, Any]) -> str:
    if waiting.get("reason") == "CrashLoopBackOff":
        last = _last_crash(container)
        exit_code = last.get("exitCode")
        if exit_code is not None:
            return f"container {container.get('name')} exited with code {exit_code}" + (
                f" ({last['reason']})" if last.get("reason") else "")
    return str(waiting.get("message") or f"container {container.get('name')}")


def _unschedulable(pods: Iterable[Mapping[str, Any]], now: datetime,
                   grace: float) -> Iterable[tuple[str, str]]:
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Pending":
            continue
        for condition in status.get("conditions") or ():
            if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                    and condition.get("reason") == "Unschedulable"
                    and _seconds_since(condition.get("lastTransitionTime"), now)
                    >= grace):
                yield "Unschedulable", _text(condition)


def _group(found: Iterable[tuple[str, str]]) -> list[str]:
    """'2 pods ImagePullBackOff: <the first one's detail>', by reason, in order of first sight."""
    counts: dict[str, int] = {}
    details: dict[str, str] = {}
    for reason, detail in found:
        counts[reason] = counts.get(reason, 0) + 1
        details.setdefault(reason, detail)
    return [f"{count} pod{'s' if count > 1 else ''} {reason}: {details[reason]}"
            for reason, count in counts.items()]


def _text(condition: Mapping[str, Any]) -> str:
    return str(condition.get("message") or condition.get("reason") or "no message")


def _seconds_since(stamp: Any, now: datetime) -> float:
    if not isinstance(stamp, str):
        return 0.0
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (now - then).total_seconds()
