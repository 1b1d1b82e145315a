"""Evictions that wait for runs, applied to one pool (the decisions are in `disruption`).

Each round: the pool's PodDisruptionBudget is put in place (read again every few minutes, and
at each new generation of the pool), the nodes of its pods are read (`node_reads`: one GET per node,
shared by every pool) to learn which are going, and the busy label is set on
or taken off its pods. Scaling (`scaling_actions.scale`) makes the pods of a going node leave.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from agentpool.models import AgentPoolSpec

from .deployment import POOL_LABEL, controlled_by, owner_reference, pool_labels
from .disruption import (
    BUSY_LABEL,
    BUSY_VALUE,
    GuardChanges,
    budget_drift,
    desired_budget,
    going_nodes,
    nodes_of,
)
from .kube import KubeApi, api_error_message
from .node_reads import NodeReader, read_nodes
from .status import Problem

BUDGET_CHECK_SECONDS = 300.0
"""The budget is read again this often, so one deleted by hand comes back."""
BUDGET_REASON = "DisruptionBudgetError"
NODES_REASON = "NodesUnreadable"

log = logging.getLogger(__name__)


@dataclass
class GuardState:
    """One pool's guard between rounds."""

    idle_since: dict[str, float] = field(default_factory=dict)
    """When each guarded pod was first seen idle (see `disruption.guard_changes`)."""
    budget_generation: int | None = None
    budget_checked: float | None = None
    problem: Problem | None = None
    """Why the budget could not be put in place, as last found."""


async def ensure_budget(kube: KubeApi, guard: GuardState, pool: Mapping[str, Any],
                        spec: AgentPoolSpec, generation: int) -> Problem | None:
    """Create or put back the pool's budget (or delete it once the guard is turned off)."""
    now = time.monotonic()
    fresh = guard.budget_checked is not None and now - guard.budget_checked < BUDGET_CHECK_SECONDS
    if guard.budget_generation == generation and fresh and guard.problem is None:
        return None  # a problem is looked at again every round: a pool deleted and created
        # again under its name meets the old pool's budget until the collector removes it
    meta = pool["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        actual = await kube.get_budget(namespace, name)
        owned = actual is not None and controlled_by(actual, pool)
        if not spec.worker.protect_busy_pods:
            if owned:
                await kube.delete_budget(namespace, name)
            guard.problem = None
        elif actual is None:
            await kube.create_budget(namespace, _desired(pool))
            log.info(f"{namespace}/{name}: created PodDisruptionBudget {name}")
            guard.problem = None
        elif not owned:
            guard.problem = Problem(BUDGET_REASON, (
                f"PodDisruptionBudget {namespace}/{name} exists and is not controlled by this "
                "pool: busy pods are not protected from evictions; delete or rename it"))
        else:
            patch = budget_drift(_desired(pool), actual)
            if patch is not None:
                await kube.patch_budget(namespace, name, patch)
            guard.problem = None
    except ApiException as error:
        guard.problem = Problem(BUDGET_REASON, (
            f"cannot put PodDisruptionBudget {namespace}/{name} in place "
            f"({api_error_message(error)}): busy pods are not protected from evictions"))
    guard.budget_generation, guard.budget_checked = generation, now
    return guard.problem


def _desired(pool: Mapping[str, Any]) -> dict[str, Any]:
    meta = pool["metadata"]
    name = meta["name"]
    return desired_budget(name, meta["namespace"], pool_labels(name), owner_reference(pool),
                          POOL_LABEL)


async def going_nodes_of(kube: NodeReader, pods: Sequence[Mapping[str, Any]]
                         ) -> tuple[frozenset[str], Problem | None]:
    """The nodes of these pods that are being emptied, and a problem when some cannot be read
    (their pods are then taken as staying)."""
    nodes = await read_nodes(kube, nodes_of(pods))
    errors = [(name, node.error) for name, node in nodes.items() if node.error]
    problem = None
    if errors:
        name, error = errors[0]
        problem = Problem(NODES_REASON, (
            f"cannot read node {name} ({error}): pods on a node being drained are not moved "
            "off it, and the drain waits until they are idle"))
    return going_nodes({n: node.body for n, node in nodes.items() if not node.error}), problem


LABEL_WRITES_AT_ONCE = 8
"""A load that ends on a large pool unlabels many pods in one round: a few writes at a time."""


async def apply_guard(namespace: str, changes: GuardChanges, kube: KubeApi) -> None:
    """Set and take off the busy label; a pod that is gone needs neither."""
    labels: list[tuple[str, str | None]] = [(name, BUSY_VALUE) for name in changes.guard]
    labels += [(name, None) for name in changes.unguard]
    slots = asyncio.Semaphore(LABEL_WRITES_AT_ONCE)

    async def write(name: str, value: str | None) -> None:
        async with slots:
            try:
                await kube.patch_pod(
                    namespace, name, {"metadata": {"labels": {BUSY_LABEL: value}}})
            except ApiException as error:
                log.warning(f"cannot label pod {namespace}/{name}: {api_error_message(error)}")

    await asyncio.gather(*(write(name, value) for name, value in labels))
