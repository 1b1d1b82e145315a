"""What bench/reaction.py and bench/recovery.py share: the real operator against kmock.

A private redis-server, kmock's Kubernetes emulation, a kubeconfig pointing at it, the
operator (kopf, in its own thread), and the given pools created and reconciled once. Import it
after ``sys.path`` holds ``tests`` and ``tests/operator`` (the scripts put them there for
``operator_harness`` and what it imports).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import kmock
import redis.asyncio as aioredis
from kubernetes.config import kube_config
from operator_harness import (
    Cluster,
    ClusterEmulator,
    OperatorThread,
    eventually,
    pool_manifest,
    seed_resources,
    write_kubeconfig,
)

from agentpool.redis_server import RedisServer, free_port
from agentpool_operator.settings import OperatorSettings


@asynccontextmanager
async def emulated_cluster(redis_url: str | None = None) -> AsyncIterator[tuple[Cluster, str]]:
    """kmock's emulation with a kubeconfig pointing at it (no operator yet), and a Redis URL:
    `redis_url`, or a private redis-server's. Yields the cluster and the URL."""
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(RedisServer()).url
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        async with ClusterEmulator() as emulator, kmock.Server(emulator):
            seed_resources(emulator)
            kubeconfig = write_kubeconfig(Path(tmp) / "kubeconfig", str(emulator.url).rstrip("/"))
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
            os.environ["KUBECONFIG"] = str(kubeconfig)
            yield Cluster(emulator), redis_url


async def create_pool(cluster: Cluster, redis_url: str, pool: str, poll: float,
                      scaling: Mapping[str, Any]) -> None:
    """Create a pool whose queue has the pool's name; return once the operator reported it."""
    manifest = pool_manifest(pool, redis_url=redis_url, queue=pool, poll_seconds=poll)
    manifest["spec"]["scaling"].update(scaling)
    await cluster.create_pool(manifest)
    await eventually(lambda: cluster.pool(pool)["status"]["conditions"])


@asynccontextmanager
async def operator_with_pools(
    pools: Mapping[str, tuple[float, Mapping[str, Any]]],
) -> AsyncIterator[tuple[Cluster, aioredis.Redis]]:
    """Run the operator with ``pools``: name -> (pollSeconds, spec.scaling overrides).

    Each pool's queue has the pool's name. Yields the emulated cluster and a Redis client.
    """
    async with emulated_cluster() as (cluster, redis_url):
        operator = OperatorThread(OperatorSettings(port=free_port()))
        await operator.start()
        redis = aioredis.Redis.from_url(redis_url)
        try:
            for pool, (poll, scaling) in pools.items():
                await create_pool(cluster, redis_url, pool, poll, scaling)
            yield cluster, redis
        finally:
            await redis.aclose()
            await operator.stop()
