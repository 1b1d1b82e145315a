"""Evictions wait for runs, on a real API server (the one part kmock cannot show): the pool's
PodDisruptionBudget makes the API server refuse to evict a pod while it runs a task, and lets
the eviction through once the pod is idle again. The task is not interrupted."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from e2e_cli import AgentpoolCli
from e2e_config import E2EConfig
from e2e_kube import Waiter
from e2e_manifests import EVICTION_TASK, Manifest, small_pool
from e2e_pools import Pools

pytestmark = pytest.mark.e2e

BUSY_LABEL = "agentpool.dev/busy"


def evict(pools: Pools, namespace: str, pod: str) -> tuple[bool, str]:
    """POST the pod's eviction, as kubectl drain does; (accepted, the server's answer)."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace}}
    done = pools.kube("create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction",
                      "--filename", "-", input=json.dumps(body), check=False)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def test_a_busy_pod_refuses_eviction_until_its_run_ends(
    make_pool: Callable[[Manifest], str], pools: Pools, cli: AgentpoolCli, waiter: Waiter,
    e2e_config: E2EConfig, run_id: str, namespace: str,
) -> None:
    name = make_pool(small_pool(f"e2e-evict-{run_id}", e2e_config.worker_image,
                                redis_secret=e2e_config.redis_secret))
    pools.wait_serving(name, 1)
    budget = waiter.until(lambda: pools.kube.get("poddisruptionbudget", name),
                          lambda b: b is not None, timeout=60,
                          what=f"PodDisruptionBudget {name}")
    assert budget is not None and budget["spec"]["maxUnavailable"] == 0

    (task_id,) = cli.submit(name, [EVICTION_TASK])
    selector = f"agentpool.dev/pool={name},{BUSY_LABEL}=true"
    busy = waiter.until(lambda: pools.kube.items("pods", selector), lambda found: len(found) == 1,
                        timeout=120, what=f"a pod of {name} labelled busy", interval=1)
    pod = busy[0]["metadata"]["name"]

    accepted, answer = evict(pools, namespace, pod)
    assert not accepted, f"the eviction of busy pod {pod} went through: {answer}"
    assert "disruption budget" in answer, answer

    info = cli.wait(name, task_id, timeout=600 * e2e_config.timeout_scale)
    assert (info["state"], info["attempts"]) == ("succeeded", 1), info

    waiter.until(lambda: pools.kube.items("pods", selector), lambda found: not found,
                 timeout=120, what=f"pod {pod} unlabelled once idle", interval=1)
    accepted, answer = evict(pools, namespace, pod)
    assert accepted, f"the eviction of idle pod {pod} was refused: {answer}"
    assert cli.counters(name)["requeued"] == 0
