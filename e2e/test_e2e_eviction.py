"""Evictions wait for runs, on a real API server (the one part kmock cannot show): the pool's
PodDisruptionBudget makes the API server refuse to evict a pod while it runs a task, and lets
the eviction through once the pod is idle again. The task is not interrupted."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

import pytest
from e2e_cli import AgentpoolCli
from e2e_config import E2EConfig, node_drain_enabled
from e2e_kube import Waiter, is_ready, missing_rights, uncordoned_afterwards
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


def schedulable_nodes(pools: Pools) -> list[str]:
    """Nodes a new worker pod can land on: not cordoned, no NoSchedule or NoExecute taint."""
    names = []
    for node in pools.kube.in_namespace(None).items("nodes"):
        spec = node.get("spec") or {}
        tainted = any(t.get("effect") in ("NoSchedule", "NoExecute")
                      for t in spec.get("taints") or [])
        if not spec.get("unschedulable") and not tainted:
            names.append(node["metadata"]["name"])
    return names


NODE_DRAIN_OFF = ("the node-drain test cordons and drains a node of the cluster: it runs only "
                  "with E2E_NODE_DRAIN=1, which e2e/kind-up.sh sets for its own kind cluster; "
                  "set it yourself on a cluster where cordoning a node is harmless")

DRAIN_RIGHTS = (("list", "nodes"), ("patch", "nodes"), ("create", "pods/eviction"))
"""What kubectl drain does: cordon (patch) the node and evict its pods; and what the test
does to pick a node (list). The node is uncordoned at the end (patch)."""


@pytest.mark.skipif(not node_drain_enabled(os.environ), reason=NODE_DRAIN_OFF)
def test_a_node_drain_waits_for_the_run_while_the_pool_moves_to_another_node(
    make_pool: Callable[[Manifest], str], pools: Pools, cli: AgentpoolCli, waiter: Waiter,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    missing = missing_rights(pools.kube, *DRAIN_RIGHTS)
    if missing:
        pytest.skip("draining a node needs rights this kubeconfig lacks (kubectl auth can-i: "
                    f"no to {'; '.join(missing)})")
    if len(schedulable_nodes(pools)) < 2:
        pytest.skip("draining a node needs a second schedulable node for the pool's new pod "
                    "(the cluster of e2e/kind-up.sh has two)")
    name = make_pool(small_pool(f"e2e-drain-{run_id}", e2e_config.worker_image,
                                redis_secret=e2e_config.redis_secret))
    pools.wait_serving(name, 1)
    (task_id,) = cli.submit(name, [EVICTION_TASK])
    selector = f"agentpool.dev/pool={name},{BUSY_LABEL}=true"
    busy = waiter.until(lambda: pools.kube.items("pods", selector), lambda found: len(found) == 1,
                        timeout=120, what=f"a pod of {name} labelled busy", interval=1)
    pod, node = busy[0]["metadata"]["name"], busy[0]["spec"]["nodeName"]

    # kubectl drain cordons the node and evicts the pool's pod, retrying while the budget
    # refuses; only this pool's pods are evicted, so the rest of the cluster is left alone.
    # The node is uncordoned afterwards, unless someone had cordoned it before.
    timeout = 900 * e2e_config.timeout_scale
    with uncordoned_afterwards(pools.kube, node):
        drain = subprocess.Popen(
            [pools.kube.binary, "drain", node, "--pod-selector", f"agentpool.dev/pool={name}",
             "--delete-emptydir-data", "--ignore-daemonsets", f"--timeout={timeout:g}s"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            def elsewhere() -> list[str]:
                return [p["metadata"]["name"] for p in pools.live_pods(name)
                        if p["spec"].get("nodeName") not in (None, node) and is_ready(p)]

            waiter.until(elsewhere, bool, timeout=300, interval=1,
                         what=f"a ready pod of {name} on another node than {node}")

            info = cli.wait(name, task_id, timeout=600 * e2e_config.timeout_scale)
            assert (info["state"], info["attempts"]) == ("succeeded", 1), info
            try:
                output, _ = drain.communicate(timeout=timeout + 60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"kubectl drain {node} did not end within "
                                     f"{timeout + 60:g}s\n{waiter.picture()}") from None
            assert drain.returncode == 0, f"{output}\n{waiter.picture()}"
            assert "evicting pod" in output and "Cannot evict pod" in output, (
                f"the drain should have been refused while the run went on:\n{output}")
            assert pools.kube.get("pod", pod) is None
            assert cli.counters(name)["requeued"] == 0
            draining = pools.kube.json("get", "events", "--field-selector",
                                       f"involvedObject.name={name},reason=NodeDraining")
            assert draining["items"], "no NodeDraining event"
        finally:
            if drain.poll() is None:
                drain.kill()
                drain.wait(timeout=10)
