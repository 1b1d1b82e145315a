"""Where scaling and recovery act on a pool: called once per observation of each pool.

The operator's per-pool loop observes the pool (its Deployment, its queue), calls `act`, and
writes the status with what `act` returns. `act` applies the pure decisions of `scaling` and
`recovery` (patch the Deployment's replicas, drain or replace pods, requeue tasks) and reports
their outcome as status fields and conditions. Until it does, pools keep the replica count
their Deployment has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentpool.models import AgentPoolSpec
from agentpool.protocol import QueueFigures, TaskQueue

from . import recovery_actions, scaling_actions
from .context import PoolState
from .deployment import POOL_LABEL
from .kube import KubeApi
from .status import ConditionUpdate


@dataclass(frozen=True)
class PoolObservation:
    """Everything observed about one pool in one round."""

    namespace: str
    name: str
    pool: Mapping[str, Any]
    """The AgentPool object as last seen (metadata, spec, status)."""
    spec: AgentPoolSpec
    deployment: Mapping[str, Any] | None
    figures: QueueFigures | None
    """None when the queue could not be read (then `queue` is None too)."""
    queue: TaskQueue | None
    previous_status: Mapping[str, Any]
    now: datetime
    state: PoolState | None = None
    """The pool's loop state (scaling history); None gives every round a fresh one."""
    pods: Sequence[dict[str, Any]] | None = None
    """The pool's pods as the watch knows them; None: `act` lists them."""


@dataclass(frozen=True)
class ActionResult:
    status_fields: Mapping[str, Any] = field(default_factory=dict)
    """Status fields to set, e.g. desiredReplicas, lastScaleTime, recoveredTasks."""
    conditions: tuple[ConditionUpdate, ...] = ()
    """Conditions to set, e.g. Scaling."""


def merge(*results: ActionResult) -> ActionResult:
    fields: dict[str, Any] = {}
    conditions: list[ConditionUpdate] = []
    for result in results:
        fields.update(result.status_fields)
        conditions.extend(result.conditions)
    return ActionResult(fields, tuple(conditions))


async def act(observation: PoolObservation, kube: KubeApi) -> ActionResult:
    """Apply recovery, then scaling, to one observed pool.

    Recovery runs first so that the tasks of dead pods are back in the queue before scaling
    looks at the backlog.
    """
    pods = observation.pods
    if pods is None:
        pods = await kube.list_pods(observation.namespace, {POOL_LABEL: observation.name})
    recovered = await recovery_actions.recover(observation, pods, kube)
    scaled = await scaling_actions.scale(observation, pods, kube)
    return merge(recovered, scaled)
