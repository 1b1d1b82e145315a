"""An AgentPool CRD older than the operator (a `helm upgrade` that left `crds/` as they were),
against kmock and a real redis-server: every pool says which fields the API server drops until
the operator's own CRD is applied.

kmock prunes nothing (a real API server does, see ../shared/notes); here the operator's side is
checked: it reads the installed CRD, compares it with its models' and reports the difference.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

import kubernetes
import pytest
from operator_harness import NAMESPACE, Cluster, OperatorThread, eventually, pool_manifest

from agentpool.crd import render_crd
from agentpool.redis_server import free_port
from agentpool_operator import installed_crd
from agentpool_operator.kube import KubeApi
from agentpool_operator.main import CRD_CHECK_SECONDS, require_crd
from agentpool_operator.settings import OperatorSettings

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def crd_without_protect_busy_pods() -> dict[str, Any]:
    crd = render_crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    del schema["properties"]["spec"]["properties"]["worker"]["properties"]["protectBusyPods"]
    return crd


def degraded(cluster: Cluster, pool: str) -> dict[str, Any]:
    return cluster.condition(pool, "Degraded")


async def test_pools_are_degraded_while_the_installed_crd_drops_fields(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str, queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(installed_crd, "CHECK_SECONDS", 0.2)
    await cluster.create(CRDS, crd_without_protect_busy_pods())
    for pool in ("old-a", "old-b"):
        await cluster.create_pool(
            pool_manifest(pool, redis_url=redis_url, queue=f"{queue_name}-{pool}"))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        for pool in ("old-a", "old-b"):
            condition = await eventually(
                lambda pool=pool: (c := degraded(cluster, pool))["status"] == "True" and c)
            assert condition["reason"] == "CRDOutdated"
            assert "drops 1 field it does not know (spec.worker.protectBusyPods)" in (
                condition["message"])

        await cluster.delete(f"{CRDS}/{installed_crd.CRD_NAME}")
        await cluster.create(CRDS, render_crd())
        for pool in ("old-a", "old-b"):
            await eventually(lambda pool=pool: degraded(cluster, pool)["status"] == "False")
        reads = cluster.requests("GET", f"customresourcedefinitions/{installed_crd.CRD_NAME}")
        assert reads, "the operator reads the installed CRD"
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_the_operators_own_crd_leaves_pools_healthy(
    cluster: Cluster, operator_settings: OperatorSettings, redis_url: str, queue_name: str,
) -> None:
    await cluster.create(CRDS, render_crd())
    await cluster.create_pool(pool_manifest("current", redis_url=redis_url, queue=queue_name))
    operator = OperatorThread(operator_settings)
    await operator.start()
    try:
        # The CRD is read in the round that writes the first status.
        condition = await eventually(lambda: degraded(cluster, "current"))
        assert cluster.requests("GET", f"customresourcedefinitions/{installed_crd.CRD_NAME}")
        assert condition["status"] == "False", condition
    finally:
        await operator.stop()
    assert operator.error is None, operator.error


async def test_an_operator_of_listed_namespaces_stops_in_one_line_without_its_crd(
    cluster: Cluster,
) -> None:
    """It would not notice the CRD appear (kopf's scanning is off for listed namespaces):
    running on, ready, it would serve nothing until restarted. Kubernetes restarts it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_OPERATOR_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from agentpool_operator.main import main; main()",
        env={**env, "AGENTPOOL_OPERATOR_PORT": str(free_port()),
             "AGENTPOOL_OPERATOR_NAMESPACES": NAMESPACE},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert stderr.decode() == (
        f"agentpool-operator: the AgentPool CRD ({installed_crd.CRD_NAME}) is not installed: "
        "apply it first (kubectl apply -f charts/agentpool-operator/crds/); an operator "
        "serving listed namespaces does not watch for it to appear\n")


async def test_the_start_up_look_for_the_crd_gives_up_on_an_api_server_that_hangs() -> None:
    """Before the health port is served: the client's own timeouts and retries would take two
    minutes, and the liveness probe would restart the pod meanwhile, for ever."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        kube = KubeApi(kubernetes.client.ApiClient(configuration=kubernetes.client.Configuration(
            host=f"http://127.0.0.1:{silent.getsockname()[1]}")))
        assert await asyncio.wait_for(require_crd(kube), CRD_CHECK_SECONDS + 10) is None
    finally:
        silent.close()
