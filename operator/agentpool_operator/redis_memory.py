"""Whether the pool's Redis may evict its keys: a Redis setting that can lose tasks silently.

Under memory pressure a Redis with a `maxmemory-policy` other than `noeviction` deletes keys
to make room. With an `allkeys-*` policy any key goes, queued and running tasks included:
they are lost, and nothing in the protocol can notice. With a `volatile-*` policy only keys
with a TTL go: finished tasks' results and events, idempotency keys (a submit with a key whose
record went makes a second task) and workers' records. Managed Redis services often default
to `volatile-lru`. The policy is read from `INFO memory` (every primary of a Cluster) every
round, which needs no `CONFIG` right; a Redis that refuses `INFO` is not judged. On a Cluster
every primary's policy counts, not only the one holding the pool's queue: a policy is a
setting that waits for its moment, and a resharding or a failover can move the queue's slot
onto an evicting primary at any time (then its keys can go before a round notices); the
pool's rate limits live on other primaries too.

Whether the pool's Redis is full, read from the same `INFO memory` every round: a Redis with
`noeviction` at its `maxmemory` refuses every write that may grow memory. The scripts then
refuse submits and claims (no new run starts) and events and checkpoints, while runs in
progress go on (heartbeats, completions, reaps and requeues are accepted): nothing fails in a
way a person sees, so the pool says it (`RedisFull`). On a Cluster only the primary that holds
the pool's queue (the slot of `ap:{<queue>}:`, from the client's slot map, which follows a
moved slot at the first MOVED reply) is judged: every key a submit, a claim, an event or a
checkpoint writes is under that hash tag. A full primary holding one of the pool's rate
limits (`ap:{rl:<name>}:`) does not hold the pool up: grants, give-backs, 429 reports and
concurrency slots write there after a first write that cannot grow memory (the EXPIRE in
rate_limit.lua and slots.lua), so a full Redis runs them (not the operator's declaration of
a limit, whose registry write a full primary refuses: the round then logs that it cannot
read the pool's rate limits, and the grants go on under the declaration already stored); a
full primary holding other queues only is those queues' pools' problem.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

from agentpool.connection import is_cluster
from agentpool.protocol import key_prefix
from agentpool.redis_errors import REDIS_FAILURES

from .status import Problem

EVICTION_REASON = "RedisEvictsKeys"
SAFE_POLICY = "noeviction"
FULL_REASON = "RedisFull"
FULL_MARGIN_FRACTION = 0.01
FULL_MARGIN_BYTES = 512 * 1024
"""A Redis within min(1 % of maxmemory, 512 KiB) of its maxmemory counts as full. Redis
refuses a write as soon as its memory is above maxmemory, and a full Redis hovers around it
(a completion grows it, an expiry shrinks it, a waiting producer fills it again): without a
margin the verdict would flip, with an Event each time, from round to round."""

NodeInfo = Mapping[str, Any]
"""One node's `INFO memory` reply."""


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


@dataclass(frozen=True)
class NodeMemory:
    """What `INFO memory` says of one node's memory, in bytes."""

    used: int
    maxmemory: int
    """0: no limit."""
    not_counted: int = 0
    """`mem_not_counted_for_evict` (replication and AOF buffers): Redis leaves it out when
    it compares its memory with maxmemory."""
    policy: str = SAFE_POLICY


def is_full(node: NodeMemory) -> bool:
    """Whether the node refuses, or is about to refuse, writes that may grow memory: it has
    a limit, no policy that evicts keys to make room (those are `eviction_problem`'s: at its
    limit such a Redis deletes keys instead of refusing writes), and the memory Redis counts
    is within the margin of the limit."""
    if node.maxmemory <= 0 or node.policy != SAFE_POLICY:
        return False
    margin = min(node.maxmemory * FULL_MARGIN_FRACTION, FULL_MARGIN_BYTES)
    return node.used - node.not_counted >= node.maxmemory - margin


def size_text(size: int) -> str:
    """Bytes for a person: 3.86 MiB, 42.5 GiB, 512 B."""
    value, unit = float(size), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, bigger
    if unit == "B":
        return f"{size} B"
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:.{digits}f} {unit}"


def full_problem(nodes: Mapping[str, NodeMemory],
                 serving: Collection[str] | None = None) -> Problem | None:
    """The problem with the Redis nodes' memory (node -> its memory), if any is full. Only
    the nodes in `serving` are judged when it is given (a Cluster's primary that holds the
    pool's queue), every node otherwise. A Cluster names its full primaries."""
    judged = nodes if serving is None else {
        node: memory for node, memory in nodes.items() if node in serving}
    full = {node: memory for node, memory in sorted(judged.items()) if is_full(memory)}
    if not full:
        return None
    node, memory = next(iter(full.items()))
    figures = f"used memory {size_text(memory.used)} of maxmemory {size_text(memory.maxmemory)}"
    others = [name for name in full if name != node]
    also = f"; {', '.join(others)} full too" if others else ""
    if len(nodes) == 1:
        where, refused = f": {figures}", "submits and new runs are refused"
    elif serving is not None:
        where = f" on {node}, which holds the queue ({figures}{also})"
        refused = "submits and new runs are refused"
    else:
        where = f" on {node} ({figures}{also})"
        refused = "submits and new runs of the queues held there are refused"
    return Problem(FULL_REASON, (
        f"Redis is full{where}: {refused}, runs in progress go on; free memory "
        f"(agentpool dead purge, a shorter AGENTPOOL_RESULT_TTL_SECONDS) or raise maxmemory"))


def queue_nodes(client: Any, queue: str | None) -> frozenset[str] | None:
    """The nodes that hold `queue`'s keys, by the client's slot map: None for every node (a
    Redis that is not a Cluster, or no queue named), none while the map does not cover the
    slot (a Cluster reconfigured, the map being refreshed)."""
    if queue is None or not is_cluster(client):
        return None
    try:
        node = client.get_node_from_key(key_prefix(queue) + "queued")
    except REDIS_FAILURES:
        return frozenset()
    return frozenset() if node is None else frozenset({str(node.name)})


async def read_memory_info(client: Any) -> dict[str, NodeInfo] | None:
    """node -> its INFO memory reply (every primary of a Cluster, the primary otherwise), or
    None when Redis does not answer it (an ACL that forbids INFO, a Redis away)."""
    try:
        if is_cluster(client):
            replies = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
            per_node = {str(node): info for node, info in replies.items()}
        else:
            per_node = {"redis": await client.info("memory")}
    except REDIS_FAILURES:
        return None
    return {node: info for node, info in per_node.items() if isinstance(info, Mapping)} or None


def policies_of(per_node: Mapping[str, NodeInfo]) -> dict[str, str] | None:
    """node -> maxmemory-policy, or None when Redis does not say."""
    policies = {node: str(info.get("maxmemory_policy", "")) for node, info in per_node.items()}
    return {node: policy for node, policy in policies.items() if policy} or None


def memory_of(per_node: Mapping[str, NodeInfo]) -> dict[str, NodeMemory]:
    """node -> its memory, for the nodes whose reply gives the figures."""
    memory: dict[str, NodeMemory] = {}
    for node, info in per_node.items():
        try:
            memory[node] = NodeMemory(
                used=int(info["used_memory"]), maxmemory=int(info["maxmemory"]),
                not_counted=int(info.get("mem_not_counted_for_evict") or 0),
                policy=str(info.get("maxmemory_policy") or SAFE_POLICY))
        except (KeyError, TypeError, ValueError):
            continue
    return memory


SHARED_READ_SECONDS = 1.0
"""Pools on one Redis share its client (redis_access.RedisClients), and a read of it this
recent: their rounds cost Redis one INFO a second, not one per pool."""

_recent_reads: weakref.WeakKeyDictionary[Any, tuple[float, dict[str, NodeInfo] | None]] = (
    weakref.WeakKeyDictionary())


async def shared_memory_info(client: Any, now: float) -> dict[str, NodeInfo] | None:
    """`read_memory_info`, or a read of the same client less than SHARED_READ_SECONDS old."""
    recent = _recent_reads.get(client)
    if recent is not None and 0 <= now - recent[0] < SHARED_READ_SECONDS:
        return recent[1]
    per_node = await read_memory_info(client)
    _recent_reads[client] = (now, per_node)
    return per_node


class MemoryCheck:
    """A pool's view of its Redis's memory, from one `INFO memory` a round (every primary of a
    Cluster; shared by the pools on that Redis): whether it may evict keys, and whether it is
    full (on a Cluster: the primary that holds the pool's queue). A read that fails (Redis
    refuses INFO, or is away for a moment), or a Cluster whose slot map names no primary that
    answered for the queue, keeps what the last one said."""

    def __init__(self) -> None:
        self.evicting: Problem | None = None
        self.full: Problem | None = None

    async def current(self, client: Any, now: float | None = None, *,
                      queue: str | None = None) -> tuple[Problem | None, Problem | None]:
        """(the eviction problem, the full problem) of the pool's Redis, the pool's queue being
        `queue` (None: every node judged); `now` is monotonic time."""
        per_node = await shared_memory_info(client, time.monotonic() if now is None else now)
        if per_node is not None:
            policies = policies_of(per_node)
            if policies is not None:
                self.evicting = eviction_problem(policies)
            memory = memory_of(per_node)
            serving = queue_nodes(client, queue)
            if memory and (serving is None or not serving.isdisjoint(memory)):
                self.full = full_problem(memory, serving)
        return self.evicting, self.full
