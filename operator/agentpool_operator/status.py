"""A pool's status and conditions as pure functions of what the operator observed.

The handlers gather the inputs (the pool, its Deployment, the queue figures or the error that
prevented reading them, the status last written, the clock) and apply the outputs (a status
patch, Kubernetes Events). Conditions follow the Kubernetes conventions: `lastTransitionTime`
moves only when a condition's status changes, and each carries the generation it was set for.

Conditions owned here: Ready, QueueReachable, Degraded. Others (Scaling, set by the scaling
policy) pass through `build_status` untouched unless given as `extra_conditions`. A Ready among
those is the scaling round's word on a pool that wants no serving pod while some pods finish
their runs: it stands in for the Deployment's counts, not for a problem.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from agentpool.health import pool_health
from agentpool.models import CONDITION_TYPES, Condition
from agentpool.protocol import QueueFigures
from agentpool.urls import mask_urls as mask_urls  # re-exported: handlers.py imports it here

Status = dict[str, Any]
ConditionStatus = Literal["True", "False", "Unknown"]

FIGURE_FIELDS = frozenset({"queued", "delayed", "deferred", "capped", "inFlight", "dead",
                           "workers"})
"""Fields that move with the queue; written at most every refresh interval."""

MAX_MESSAGE_LENGTH = 1024


@dataclass(frozen=True)
class Problem:
    """Why something the pool needs cannot be used; `message` is already safe to publish."""

    reason: str
    message: str


@dataclass(frozen=True)
class ConditionUpdate:
    type: str
    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True)
class DeploymentView:
    """The replica counts of a pool's Deployment."""

    desired: int
    replicas: int
    ready: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any] | None) -> DeploymentView | None:
        if body is None:
            return None
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        return cls(
            desired=int(spec.get("replicas", 1)),
            replicas=int(status.get("replicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
        )


@dataclass(frozen=True)
class StatusEvent:
    """A Kubernetes Event to post about the pool."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sanitize(text: str) -> str:
    """Mask credentials of any URL in `text` and cap its length, for status and Events."""
    cleaned = mask_urls(text, every_query_value=True).strip()
    if len(cleaned) > MAX_MESSAGE_LENGTH:
        cleaned = cleaned[: MAX_MESSAGE_LENGTH - 3] + "..."
    return cleaned


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    update: ConditionUpdate,
    *,
    now: datetime,
    generation: int,
) -> list[dict[str, Any]]:
    """Return `conditions` with `update` applied; other condition types are kept as they are."""
    result: list[dict[str, Any]] = []
    previous: Mapping[str, Any] | None = None
    for condition in conditions:
        if condition.get("type") == update.type:
            previous = condition
        else:
            result.append(dict(condition))
    unchanged = previous is not None and previous.get("status") == update.status
    transition = previous.get("lastTransitionTime") if previous is not None else None
    result.append({
        "type": update.type,
        "status": update.status,
        "reason": update.reason,
        "message": sanitize(update.message),
        "lastTransitionTime": transition if unchanged and transition else rfc3339(now),
        "observedGeneration": generation,
    })
    order = {name: index for index, name in enumerate(CONDITION_TYPES)}
    return sorted(result, key=lambda c: order.get(str(c.get("type")), len(order)))


INVALID_SPEC = "InvalidSpec"


def invalid_spec_status(previous: Mapping[str, Any], problem: str, *, now: datetime,
                        generation: int) -> dict[str, Any]:
    """The status of a pool whose spec the operator's models refuse (the API server let it
    in: an installed CRD older than the operator lacks a rule): Degraded with the reason, the
    rest as last written. Its figures and pods go unobserved until the spec is mended."""
    conditions = set_condition(
        previous.get("conditions") or (),
        ConditionUpdate("Degraded", "True", INVALID_SPEC,
                        f"the spec breaks a rule of this operator, so the pool is not acted on "
                        f"(is the installed CRD older than the operator?): {problem}"),
        now=now, generation=generation)
    return {**previous, "conditions": conditions, "health": "Degraded"}


def pool_conditions(
    *,
    queue: str,
    deployment: DeploymentView | None,
    queue_problem: Problem | None,
    deployment_problem: Problem | None,
    degraded_only: Sequence[Problem] = (),
    serving_ready: ConditionUpdate | None = None,
) -> list[ConditionUpdate]:
    """Ready, QueueReachable and Degraded from the observations. `degraded_only` problems
    make the pool Degraded but not unready (it still serves). `serving_ready`, Ready as the
    scaling round sees the pods that should serve, replaces the word of the Deployment's counts
    (which hold the replicas of pods that finish their runs before they go)."""
    if queue_problem is not None:
        reachable = ConditionUpdate(
            "QueueReachable", "False", queue_problem.reason, queue_problem.message
        )
    else:
        reachable = ConditionUpdate(
            "QueueReachable", "True", "Reachable", f"queue {queue!r} is reachable"
        )

    problems = [p for p in (deployment_problem, queue_problem) if p is not None]
    if problems or degraded_only:
        every = [*problems, *degraded_only]
        degraded = ConditionUpdate(
            "Degraded", "True", every[0].reason, "; ".join(p.message for p in every)
        )
    elif deployment is None:
        degraded = ConditionUpdate(
            "Degraded", "True", "DeploymentMissing", "the worker Deployment does not exist"
        )
    else:
        degraded = ConditionUpdate("Degraded", "False", "AsExpected", "no problem observed")

    counts = (
        f"{deployment.ready}/{deployment.desired} replicas ready" if deployment is not None else ""
    )
    if problems:
        ready = ConditionUpdate("Ready", "False", problems[0].reason, problems[0].message)
    elif deployment is None:
        ready = ConditionUpdate(
            "Ready", "False", "DeploymentMissing", "the worker Deployment does not exist"
        )
    elif serving_ready is not None:
        ready = serving_ready
    elif deployment.desired == 0:
        ready = ConditionUpdate(
            "Ready", "True", "ScaledToZero", "no worker wanted; the pool wakes when tasks arrive"
        )
    elif deployment.ready == 0:
        ready = ConditionUpdate("Ready", "False", "NoReadyReplicas", counts)
    else:
        ready = ConditionUpdate("Ready", "True", "ReplicasReady", counts)
    return [ready, reachable, degraded]


def build_status(
    *,
    queue: str,
    generation: int,
    deployment: DeploymentView | None,
    figures: QueueFigures | None,
    previous: Mapping[str, Any] | None,
    now: datetime,
    queue_problem: Problem | None = None,
    deployment_problem: Problem | None = None,
    extra_fields: Mapping[str, Any] | None = None,
    extra_conditions: Sequence[ConditionUpdate] = (),
    degraded_problems: Sequence[Problem] = (),
    paused: bool = False,
    gone_conditions: Collection[str] = (),
) -> Status:
    """The complete new status of a pool.

    Fields this module does not own (those of scaling and recovery) are carried over from
    `previous` unless `extra_fields` sets them. Without figures (the queue could not be read)
    the last known figures stay, and QueueReachable=False says they are stale. Conditions of
    `gone_conditions` are dropped (their source is gone: per-pool credentials turned off).
    """
    status: Status = dict(previous or {})
    view = deployment or DeploymentView(desired=0, replicas=0, ready=0)
    status.update(
        queue=queue,
        replicas=view.replicas,
        readyReplicas=view.ready,
        desiredReplicas=view.desired,
        observedGeneration=generation,
    )
    if figures is not None:
        status.update(
            queued=figures.queued,
            delayed=figures.delayed,
            deferred=figures.deferred,
            capped=figures.capped,
            inFlight=figures.in_flight,
            dead=figures.dead,
            workers=figures.workers,
        )
    else:
        for name in sorted(FIGURE_FIELDS):
            status.setdefault(name, 0)
    status.update(extra_fields or {})

    conditions: list[dict[str, Any]] = [dict(c) for c in status.get("conditions") or []
                                         if c.get("type") not in gone_conditions]
    serving_ready = [c for c in extra_conditions if c.type == "Ready"]
    updates = pool_conditions(
        queue=queue,
        deployment=deployment,
        queue_problem=queue_problem,
        deployment_problem=deployment_problem,
        degraded_only=degraded_problems,
        serving_ready=serving_ready[-1] if serving_ready else None,
    )
    for update in [*updates, *(c for c in extra_conditions if c.type != "Ready")]:
        conditions = set_condition(conditions, update, now=now, generation=generation)
    status["conditions"] = conditions
    status["health"] = pool_health(
        [Condition(type=c["type"], status=c["status"]) for c in conditions], paused)
    return status


def status_write_needed(
    previous: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    now: datetime,
    last_figures_write: datetime | None,
    refresh_seconds: float,
) -> bool:
    """Whether `new` must be written now.

    Any change besides the queue figures and the conditions' messages (replicas, generation,
    a condition's status or reason) is written at once; a change of those alone waits until
    `refresh_seconds` passed since the last write. A message may carry figures of its own
    (the backlog a rate limit holds back, the memory Redis uses) that move every round.
    """
    old = previous or {}
    if _settled(old) != _settled(new):
        return True
    if old == new:
        return False
    if last_figures_write is None:
        return True
    return (now - last_figures_write).total_seconds() >= refresh_seconds


def _settled(status: Mapping[str, Any]) -> dict[str, Any]:
    """A status without what moves with the queue: figures and conditions' messages."""
    kept = {key: value for key, value in status.items() if key not in FIGURE_FIELDS}
    if "conditions" in kept:
        kept["conditions"] = [{k: v for k, v in c.items() if k != "message"}
                              for c in kept["conditions"] or []]
    return kept


_BAD_WHEN = {"QueueReachable": "False", "Degraded": "True"}


def condition_events(
    previous: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> list[StatusEvent]:
    """Events for conditions that turned bad (or changed reason while bad) or recovered."""
    before = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    events: list[StatusEvent] = []
    for condition in new.get("conditions") or []:
        kind = condition.get("type")
        bad = _BAD_WHEN.get(str(kind))
        if bad is None:
            continue
        old = before.get(kind)
        was_bad = old is not None and old.get("status") == bad
        if condition.get("status") == bad:
            if not was_bad or old is None or old.get("reason") != condition.get("reason"):
                events.append(StatusEvent("Warning", condition["reason"], condition["message"]))
        elif was_bad:
            events.append(StatusEvent("Normal", "Recovered", f"{kind}: {condition['message']}"))
    unique: dict[str, StatusEvent] = {}
    for event in events:
        unique.setdefault(event.reason, event)
    return list(unique.values())
