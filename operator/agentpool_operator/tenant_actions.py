"""A pool's tenants' weights and caps on runs at once (`spec.tenants`,
`spec.tenantMaxRunning`), once per round: written to its queue when they differ from what the
queue holds, so that an edit of the spec, a Redis that lost the keys or a value changed by
hand comes back to the spec within a round. Tenants not listed weigh 1 and have the default
cap: a pool without them clears the queue's. Pools sharing a queue (Degraded, `QueueShared`)
each write their own: set the same on both. A round that could not read the queue, or a Redis
error, skips them for the round (the next round writes them).
"""

from __future__ import annotations

import logging

from agentpool.redis_errors import REDIS_FAILURES

from .observation import PoolObservation
from .status import sanitize

log = logging.getLogger(__name__)


async def apply_tenants(observation: PoolObservation) -> None:
    queue = observation.queue
    if queue is None or observation.figures is None:
        return  # no Redis this round: the next round writes them
    owner = f"{observation.namespace}/{observation.name}"
    spec = observation.spec
    tenants = spec.tenants or ()
    weights = {tenant.name: tenant.weight for tenant in tenants}
    caps = {tenant.name: tenant.max_running for tenant in tenants
            if tenant.max_running is not None}
    try:
        weighted = await queue.set_tenant_weights(weights)
        capped = await queue.set_tenant_caps(caps, spec.tenant_max_running)
    except REDIS_FAILURES as error:
        log.warning(f"{owner}: cannot set its tenants' weights and caps: "
                    f"{sanitize(str(error))}")
        return
    if weighted:
        log.info(f"{owner}: tenants' weights set on queue {queue.name}: "
                 f"{len(weights)} tenant(s) weighted, any other weighs 1")
    if capped:
        default = spec.tenant_max_running
        log.info(f"{owner}: tenants' caps on runs at once set on queue {queue.name}: "
                 f"{len(caps)} tenant(s) capped, any other "
                 f"{'by ' + str(default) if default else 'not capped'}")
