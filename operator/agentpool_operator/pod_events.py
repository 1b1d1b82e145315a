"""The pools' worker pods, from the watch: an index of them, and quick requeueing.

- `pool_pods` keeps every pool's pods in memory, (namespace, pool) -> pod bodies. The pool's
  loop reads them there instead of listing them every round; kopf fills the index from its
  initial listing before any pool's loop starts, and keeps it current from the pod events.
- `pod_event` requeues a dead or restarted pod's tasks at once. The pool's loop would find
  them on its next round too; acting on the event itself saves up to a poll interval (and the
  rest of a round: the Deployment, the queue figures).
"""

from __future__ import annotations

from typing import Any

import kopf

from agentpool.redis_errors import REDIS_FAILURES

from . import recovery_actions
from .deployment import POOL_LABEL
from .handlers import context


@kopf.index("v1", "pods", labels={POOL_LABEL: kopf.PRESENT})
def pool_pods(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Index each pool pod under its pool; managedFields (often most of a pod) are left out."""
    meta = {k: v for k, v in body.get("metadata", {}).items() if k != "managedFields"}
    pod = {**body, "metadata": meta}
    return {(meta.get("namespace", ""), meta.get("labels", {}).get(POOL_LABEL, "")): pod}


@kopf.on.event("v1", "pods", labels={POOL_LABEL: kopf.PRESENT})
async def pod_event(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    namespace = body.metadata.namespace
    pool = body.metadata.labels.get(POOL_LABEL)
    if namespace is None or pool is None:
        return
    ctx = context(memo)
    state = ctx.pools.get((namespace, pool))
    if state is None:
        return
    try:
        taken = await recovery_actions.recover_pod(state.recovery, event.get("type"), body,
                                                   ctx.api)
    except REDIS_FAILURES as error:
        logger.warning(f"cannot requeue the tasks of pod {body.metadata.name}: {error!r}; "
                       "the pool's next round retries")
        return
    if taken:
        state.wake.set()
