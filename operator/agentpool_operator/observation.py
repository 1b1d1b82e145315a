"""What one round of a pool's loop observed, and what acting on it gives back.

Shared by the action modules (`recovery_actions`, `scaling_actions`) and `actions`, which
calls them: it sits below all three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentpool.models import AgentPoolSpec
from agentpool.protocol import QueueFigures, TaskQueue
from agentpool.scaling.policy import LimitWait

from .context import PoolState
from .status import ConditionUpdate, Problem


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
    limit_waits: tuple[LimitWait, ...] = ()
    """Share of the workers' run time spent waiting per rate limit (see rate_limit_actions)."""
    deployment_problem: Problem | None = None
    """Why the operator did not write the Deployment this round (a refused ServiceAccount,
    another owner's Deployment, an API error), if it did not."""


@dataclass(frozen=True)
class ActionResult:
    status_fields: Mapping[str, Any] = field(default_factory=dict)
    """Status fields to set, e.g. desiredReplicas, lastScaleTime, recoveredTasks."""
    conditions: tuple[ConditionUpdate, ...] = ()
    """Conditions to set, e.g. Scaling."""
    problems: tuple[Problem, ...] = ()
    """Problems that make the pool Degraded without stopping it (a conflicting rate limit)."""
    queue_shrank: bool = False
    """Recovery ended waiting tasks (expired ones at the queue's head): the figures read
    before it count them, so scaling reads them again."""
    figures: QueueFigures | None = None
    """The figures read again after recovery ended waiting tasks (None: not read again); the
    status reports them."""
