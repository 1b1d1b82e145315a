"""Where a pool's round acts: called once per observation of each pool.

The operator's per-pool loop observes the pool (its Deployment, its queue), calls `act`, and
writes the status with what `act` returns. `act` applies the pure decisions of `recovery`,
`scaling_plan` (with `agentpool.scaling`) and `schedules`, through their action modules:
requeue tasks and replace pods, set the tenants' weights and caps, declare the rate limits,
patch the Deployment's replicas and drain pods, submit the tasks of schedules that are due;
their outcomes come back as status fields and conditions. Until it does, pools keep the
replica count their Deployment has.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from . import (
    rate_limit_actions,
    recovery_actions,
    scaling_actions,
    schedule_actions,
    tenant_actions,
)
from .deployment import POOL_LABEL
from .kube import KubeApi
from .observation import ActionResult, PoolObservation
from .redis_access import QueueAccessError, read_figures
from .status import ConditionUpdate, Problem


def merge(*results: ActionResult) -> ActionResult:
    fields: dict[str, Any] = {}
    conditions: list[ConditionUpdate] = []
    problems: list[Problem] = []
    for result in results:
        fields.update(result.status_fields)
        conditions.extend(result.conditions)
        problems.extend(result.problems)
    return ActionResult(fields, tuple(conditions), tuple(problems))


async def act(observation: PoolObservation, kube: KubeApi) -> ActionResult:
    """Apply recovery, the tenants, the rate limits, scaling and the schedules, in that order,
    to one observed pool.

    Recovery runs first so that the tasks of dead pods are back in the queue before scaling
    looks at the backlog (and expired tasks it ended are out of it: the figures are read
    again); the tenants' weights are set, the rate limits declared and their waits read
    before scaling.
    """
    pods = observation.pods
    if pods is None:
        pods = await kube.list_pods(observation.namespace, {POOL_LABEL: observation.name})
    recovered = await recovery_actions.recover(observation, pods, kube)
    figures_again = None
    if recovered.queue_shrank and observation.queue is not None:
        # unread, the figures of before recovery stand: one round counts the ended tasks
        with contextlib.suppress(QueueAccessError):
            figures_again = await read_figures(observation.queue)
            observation = replace(observation, figures=figures_again)
    await tenant_actions.apply_tenants(observation)
    limits = await rate_limit_actions.observe_limits(observation)
    observation = replace(observation, limit_waits=limits.waits)
    scaled = await scaling_actions.scale(observation, pods, kube)
    scheduled = await schedule_actions.run_schedules(observation)
    return replace(merge(recovered, scaled, ActionResult(problems=limits.problems), scheduled),
                   figures=figures_again)
