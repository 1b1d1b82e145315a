"""A pool's tenants' weights (`spec.tenants`), once per round: written to its queue when they
differ from what the queue holds, so that an edit of the spec, a Redis that lost the key or a
weight changed by hand comes back to the spec within a round. Tenants not listed weigh 1: a
pool without `spec.tenants` clears the queue's weights. Pools sharing a queue (Degraded,
`QueueShared`) each write their own: set the same weights on both. A round that could not
read the queue, or a Redis error, skips the weights for the round (the next round writes
them).
"""

from __future__ import annotations

import logging

from agentpool.redis_errors import REDIS_FAILURES

from .observation import PoolObservation
from .status import sanitize

log = logging.getLogger(__name__)


async def apply_weights(observation: PoolObservation) -> None:
    queue = observation.queue
    if queue is None or observation.figures is None:
        return  # no Redis this round: the next round writes them
    owner = f"{observation.namespace}/{observation.name}"
    weights = {tenant.name: tenant.weight for tenant in observation.spec.tenants or ()}
    try:
        changed = await queue.set_tenant_weights(weights)
    except REDIS_FAILURES as error:
        log.warning(f"{owner}: cannot set its tenants' weights: {sanitize(str(error))}")
        return
    if changed:
        log.info(f"{owner}: tenants' weights set on queue {queue.name}: "
                 f"{len(weights)} tenant(s) weighted, any other weighs 1")
