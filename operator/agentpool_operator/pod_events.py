"""Events of the pools' worker pods: requeue a dead or restarted pod's tasks at once.

The pool's loop would find them on its next round too; acting on the event itself saves up to
a poll interval (and the rest of a round: the Deployment, the queue figures, the pod list).
"""

from __future__ import annotations

from typing import Any

import kopf

from . import recovery_actions
from .deployment import POOL_LABEL
from .handlers import context


@kopf.on.event("v1", "pods", labels={POOL_LABEL: kopf.PRESENT})
async def pod_event(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    namespace = body.metadata.namespace
    pool = body.metadata.labels.get(POOL_LABEL)
    if namespace is None or pool is None:
        return
    state = context(memo).pools.get((namespace, pool))
    if state is None:
        return
    try:
        taken = await recovery_actions.recover_pod(state.recovery, event.get("type"), body)
    except recovery_actions.REDIS_ERRORS as error:
        logger.warning(f"cannot requeue the tasks of pod {body.metadata.name}: {error!r}; "
                       "the pool's next round retries")
        return
    if taken:
        state.wake.set()
