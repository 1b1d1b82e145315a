"""Recovery applied to one pool: requeue the tasks of dead pods, drain and replace stuck ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .kube import KubeApi

if TYPE_CHECKING:
    from .actions import ActionResult, PoolObservation


async def recover(
    observation: PoolObservation, pods: Sequence[dict[str, Any]], kube: KubeApi
) -> ActionResult:
    from .actions import ActionResult

    return ActionResult()
