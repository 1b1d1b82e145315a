"""Scaling applied to one pool: size the Deployment, drain idle pods first on scale-down."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .kube import KubeApi

if TYPE_CHECKING:
    from .actions import ActionResult, PoolObservation


async def scale(
    observation: PoolObservation, pods: Sequence[dict[str, Any]], kube: KubeApi
) -> ActionResult:
    from .actions import ActionResult

    return ActionResult()
