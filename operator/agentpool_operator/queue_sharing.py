"""Pools whose workers serve the same queue on the same Redis.

Two AgentPools that name the same queue on one Redis (the same `spec.queue`, or two pools of
the same name in two namespaces) run each other's tasks with their own handler images, and
each scales for the whole queue. The operator says so on both pools (Degraded, reason
`QueueShared`, naming the others) and keeps running them: which of the two is the mistake is
for their owners to say. Only pools this operator watches are compared. A Service's names
count as one (`redis` in namespace `team`, `redis.team`, `redis.team.svc`,
`redis.team.svc.cluster.local`), and the same short name in two namespaces as two Services;
a Redis reached under two other names (an IP address and a DNS name) counts as two.

The same addresses tell when a queue a pool hands tasks to (`spec.worker.submitsTo`) has no
pool at all on that Redis: its tasks would wait for good. The pool is Degraded, reason
`SubmitsToUnserved`, until a pool of that queue exists; judged only once every watched pool
had a round, so that an operator starting up does not report a pool it has not looked at
yet. A pool whose queue cannot be opened (its Redis URL unknown) serves no queue here.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentpool.urls import redis_server

from .status import Problem

REASON = "QueueShared"
UNSERVED = "SubmitsToUnserved"


def queue_address(redis_url: str, queue: str, namespace: str) -> str:
    """Where a pool of `namespace` keeps its tasks: its Redis server (`redis_server`) and the
    queue on it."""
    return f"{redis_server(redis_url, namespace)} {queue}"


def server_of(address: str) -> str:
    """The Redis server of a queue address (what a pool's `status.redis` shows)."""
    return address.rpartition(" ")[0]


def sharing_problem(
    pool: tuple[str, str], addresses: Mapping[tuple[str, str], str | None]
) -> Problem | None:
    """Why `pool` is Degraded when other pools (namespace, name) serve its queue too; None
    when none does or its own address is unknown (its Redis not reached yet)."""
    own = addresses.get(pool)
    if own is None:
        return None
    others = sorted(f"{ns}/{name}" for (ns, name), address in addresses.items()
                    if address == own and (ns, name) != pool)
    if not others:
        return None
    server, _, queue = own.rpartition(" ")
    return Problem(
        REASON,
        f"queue {queue!r} on {server} is also served by {', '.join(others)}: the pools' "
        "workers take each other's tasks, and each pool scales for the whole queue; give "
        "each pool a queue of its own (spec.queue)",
    )


def unserved_problem(
    pool: tuple[str, str], addresses: Mapping[tuple[str, str], str | None],
    submits_to: list[str], *, every_pool_seen: bool,
) -> Problem | None:
    """Why `pool` is Degraded when queues of its `submitsTo` are served by no pool on its
    Redis; None when each has one, while its own address is unknown, or before every pool
    had a round (`every_pool_seen`)."""
    own = addresses.get(pool)
    if own is None or not submits_to or not every_pool_seen:
        return None
    server, _, queue = own.rpartition(" ")
    served = {address for address in addresses.values() if address is not None}
    unserved = [other for other in dict.fromkeys(submits_to)
                if other != queue and f"{server} {other}" not in served]
    if not unserved:
        return None
    names = ", ".join(repr(q) for q in unserved)
    return Problem(
        UNSERVED,
        f"spec.worker.submitsTo names {names}, served by no pool on {server} that this "
        "operator watches: the tasks the workers hand there wait until such a pool exists",
    )
