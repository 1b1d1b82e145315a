"""What bench/reaction.py and bench/recovery.py share: the real operator against kmock.

A private redis-server, kmock's Kubernetes emulation, a kubeconfig pointing at it, the
operator (kopf, in its own thread), and the given pools created and reconciled once. Import it
after ``sys.path`` holds ``tests/operator`` (the scripts put it there for ``operator_harness``).
"""

from __future__ import annotations

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
async def operator_with_pools(
    pools: Mapping[str, tuple[float, Mapping[str, Any]]],
) -> AsyncIterator[tuple[Cluster, aioredis.Redis]]:
    """Run the operator with ``pools``: name -> (pollSeconds, spec.scaling overrides).

    Each pool's queue has the pool's name. Yields the emulated cluster and a Redis client.
    """
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        async with ClusterEmulator() as emulator, kmock.Server(emulator):
            seed_resources(emulator)
            kubeconfig = write_kubeconfig(Path(tmp) / "kubeconfig", str(emulator.url).rstrip("/"))
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
            os.environ["KUBECONFIG"] = str(kubeconfig)
            cluster = Cluster(emulator)
            operator = OperatorThread(OperatorSettings(port=free_port()))
            await operator.start()
            redis = aioredis.Redis.from_url(server.url)
            try:
                for pool, (poll, scaling) in pools.items():
                    manifest = pool_manifest(pool, redis_url=server.url, queue=pool,
                                             poll_seconds=poll)
                    manifest["spec"]["scaling"].update(scaling)
                    await cluster.create_pool(manifest)
                    await eventually(lambda p=pool: cluster.pool(p)["status"]["conditions"])
                yield cluster, redis
            finally:
                await redis.aclose()
                await operator.stop()
