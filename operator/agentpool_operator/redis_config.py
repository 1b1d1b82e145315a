"""Whether the pool's Redis may evict its keys: a Redis setting that can lose tasks silently.

Under memory pressure a Redis with a `maxmemory-policy` other than `noeviction` deletes keys
to make room. With an `allkeys-*` policy any key goes, queued and running tasks included:
they are lost, and nothing in the protocol can notice. With a `volatile-*` policy only keys
with a TTL go: finished tasks' results and events, idempotency keys (a submit with a key whose
record went makes a second task) and workers' records. Managed Redis services often default
to `volatile-lru`. The policy is read from `INFO memory` (every primary of a Cluster), which
needs no `CONFIG` right; a Redis that refuses `INFO` is not judged.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from redis.asyncio.cluster import RedisCluster

from agentpool.connection import is_cluster
from agentpool.redis_errors import REDIS_FAILURES

from .status import Problem

EVICTION_REASON = "RedisEvictsKeys"
CHECK_SECONDS = 300.0
"""How often a pool reads its Redis's policy: a setting that rarely changes."""
SAFE_POLICY = "noeviction"


def eviction_problem(policies: Mapping[str, str]) -> Problem | None:
    """The problem with the eviction policies of the Redis nodes (node -> policy), if any."""
    risky = {node: policy for node, policy in sorted(policies.items()) if policy != SAFE_POLICY}
    if not risky:
        return None
    policy = next(iter(risky.values()))
    where = "" if len(policies) == 1 else f" on {', '.join(risky)}"
    if policy.startswith("allkeys-"):
        lost = "queued and running tasks can be lost"
    else:
        lost = ("finished tasks' results and events, idempotency keys and workers' records "
                "can go before their time")
    return Problem(EVICTION_REASON, (
        f"Redis evicts keys when it reaches maxmemory (maxmemory-policy {policy}{where}): "
        f"{lost}; set maxmemory-policy noeviction"))


async def read_eviction_policies(client: Any) -> dict[str, str] | None:
    """node -> maxmemory-policy from INFO memory, or None when Redis does not say."""
    try:
        if is_cluster(client):
            replies = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
            per_node = {str(node): info for node, info in replies.items()}
        else:
            per_node = {"redis": await client.info("memory")}
    except REDIS_FAILURES:
        return None
    policies = {node: str(info.get("maxmemory_policy", ""))
                for node, info in per_node.items() if isinstance(info, Mapping)}
    return {node: policy for node, policy in policies.items() if policy} or None


class EvictionCheck:
    """A pool's view of its Redis's policy, read at most every CHECK_SECONDS; a read that
    fails (Redis refuses INFO, or is away for a moment) keeps what the last one said."""

    def __init__(self) -> None:
        self.checked: float | None = None
        self.problem: Problem | None = None

    async def current(self, client: Any, now: float | None = None) -> Problem | None:
        moment = time.monotonic() if now is None else now
        if self.checked is None or moment - self.checked >= CHECK_SECONDS:
            self.checked = moment
            policies = await read_eviction_policies(client)
            if policies is not None:
                self.problem = eviction_problem(policies)
        return self.problem
