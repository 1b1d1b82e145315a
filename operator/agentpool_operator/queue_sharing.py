"""Pools whose workers serve the same queue on the same Redis.

Two AgentPools that name the same queue on one Redis (the same `spec.queue`, or two pools of
the same name in two namespaces) run each other's tasks with their own handler images, and
each scales for the whole queue. The operator says so on both pools (Degraded, reason
`QueueShared`, naming the others) and keeps running them: which of the two is the mistake is
for their owners to say. Only pools this operator watches are compared, and a Redis reached
by two different host names counts as two.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from .status import Problem

REASON = "QueueShared"


def queue_address(redis_url: str, queue: str) -> str:
    """Where a pool's tasks live: the Redis server (the URL's hosts, port and database, without
    credentials or options) and the queue on it."""
    parts = urlsplit(redis_url)
    hosts = parts.netloc.rpartition("@")[2].lower()
    database = parts.path.rstrip("/") or "/0"
    return f"{parts.scheme}://{hosts}{database} {queue}"


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
