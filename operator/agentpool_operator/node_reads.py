"""Nodes read one by one, by name, shared by every pool of the operator.

Two rounds read them: the disruption guard (is a pod's node being drained?) and recovery (is
a pod's node gone?). A GET by name needs only `get` on nodes, which the chart grants in
cluster-wide and namespaced installs alike; a list of every node would need `list` and grow
with the cluster.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from .kube import api_error_message

NODE_CACHE_SECONDS = 10.0
"""A node's cordon, taint or removal is seen within this long (plus a round of the pool's
loop)."""
FORGET_SECONDS = 30 * NODE_CACHE_SECONDS
"""A node no pool asked about for this long leaves the cache."""


class NodeReader(Protocol):
    async def get_node(self, name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class NodeRead:
    body: Mapping[str, Any] | None
    """The node, or None when the API says it does not exist."""
    error: str | None
    """Why the node could not be read (then `body` says nothing)."""
    read: float
    """When it was read (`time.monotonic()`)."""


_caches: weakref.WeakKeyDictionary[NodeReader, dict[str, NodeRead]] = (
    weakref.WeakKeyDictionary())


async def read_nodes(kube: NodeReader, names: Collection[str], *,
                     missing_read_after: float | None = None) -> dict[str, NodeRead]:
    """`names` as read within NODE_CACHE_SECONDS; a node found missing is read again when
    that read is older than `missing_read_after` (a verdict of "gone" must not predate what
    it judges)."""
    cache = _caches.setdefault(kube, {})
    now = time.monotonic()

    def stale(name: str) -> bool:
        node = cache.get(name)
        if node is None or now - node.read >= NODE_CACHE_SECONDS:
            return True
        return (missing_read_after is not None and node.body is None and node.error is None
                and node.read < missing_read_after)

    wanted = sorted(names)
    to_read = [name for name in wanted if stale(name)]
    for name, node in zip(to_read, await asyncio.gather(*(_read(kube, n) for n in to_read)),
                          strict=True):
        cache[name] = node
    for name in [n for n, node in cache.items() if now - node.read >= FORGET_SECONDS]:
        del cache[name]
    return {name: cache[name] for name in wanted}


async def _read(kube: NodeReader, name: str) -> NodeRead:
    try:
        return NodeRead(await kube.get_node(name), None, time.monotonic())
    except ApiException as error:
        return NodeRead(None, api_error_message(error), time.monotonic())

