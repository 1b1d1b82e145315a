from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes.config import kube_config
from operator_harness import (
    Cluster,
    ClusterEmulator,
    OperatorThread,
    seed_resources,
    write_kubeconfig,
)

from agentpool.redis_server import free_port
from agentpool_operator import redis_memory
from agentpool_operator.settings import OperatorSettings


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": ClusterEmulator}


@pytest.fixture
def cluster(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Cluster:
    seed_resources(kmock)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url).rstrip("/"))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # The kubernetes client read $KUBECONFIG once, at import; kopf's login uses that default.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    return Cluster(kmock)


@pytest.fixture
def operator_settings() -> OperatorSettings:
    return OperatorSettings(port=free_port(), status_refresh_seconds=0.5)


@pytest.fixture
def per_pool_settings() -> OperatorSettings:
    """`operator_settings` with per-pool Redis users on (a module sets its `operator_settings`
    to it)."""
    return OperatorSettings(port=free_port(), status_refresh_seconds=0.5,
                            per_pool_credentials=True)


@pytest.fixture
def pool_name() -> str:
    return f"p-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def operator(
    cluster: Cluster, operator_settings: OperatorSettings
) -> AsyncIterator[OperatorThread]:
    thread = OperatorThread(operator_settings)
    await thread.start()
    yield thread
    await thread.stop()
    assert thread.error is None, thread.error


@pytest.fixture
def memory_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per INFO memory read of the operator: its rounds, counted without a clock."""
    reads: list[int] = []
    read = redis_memory.read_memory_info

    async def counted(client: Any) -> dict[str, redis_memory.NodeInfo] | None:
        reads.append(1)
        return await read(client)

    monkeypatch.setattr(redis_memory, "read_memory_info", counted)
    return reads
