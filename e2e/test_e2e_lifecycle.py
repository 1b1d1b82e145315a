"""A pool's Deployment belongs to the pool: labelled, owned, and gone when the pool is deleted."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from e2e_cli import AgentpoolCli
from e2e_config import E2EConfig
from e2e_kube import CommandError, Kubectl, Waiter
from e2e_manifests import (
    COMMAND_AGENT_LABEL,
    INIT_MARKER,
    Manifest,
    command_pool,
    scheduled_pool,
    small_pool,
    weighted_pool,
)
from e2e_pools import POOL_LABEL, Pools

from agentpool.models import GROUP, KIND, VERSION

pytestmark = pytest.mark.e2e

WORKER_LABELS = {
    "app.kubernetes.io/name": "agentpool-worker",
    "app.kubernetes.io/managed-by": "agentpool-operator",
}


def test_deleting_the_pool_removes_its_deployment(
    make_pool: Callable[[Manifest], str], pools: Pools, waiter: Waiter,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    name = make_pool(small_pool(f"e2e-gc-{run_id}", e2e_config.worker_image,
                                redis_secret=e2e_config.redis_secret))
    deployment = pools.wait_serving(name, 1)
    pool = pools.get(name)
    assert pool is not None
    labels = deployment["metadata"].get("labels") or {}
    assert labels.get(POOL_LABEL) == name
    assert WORKER_LABELS.items() <= labels.items()
    owners = deployment["metadata"].get("ownerReferences") or []
    assert [(o["apiVersion"], o["kind"], o["name"], o["uid"], o.get("controller"))
            for o in owners] == [(f"{GROUP}/{VERSION}", KIND, name,
                                  pool["metadata"]["uid"], True)]

    try:
        pools.kube("delete", "agentpool", name, "--wait=true",
                   f"--timeout={int(120 * waiter.scale)}s", timeout=120 * waiter.scale + 30)
    except CommandError as exc:
        raise exc.with_picture(waiter.picture()) from None
    assert pools.get(name) is None
    waiter.true(lambda: pools.deployment(name) is None, timeout=120,
                what=f"garbage collection of the Deployment of deleted pool {name}")
    waiter.true(lambda: not pools.pods(name), timeout=180,
                what=f"the worker pods of deleted pool {name} to go")


def test_worker_pods_run_under_the_restricted_pod_security_standard(
    make_pool: Callable[[Manifest], str], pools: Pools, kube: Kubectl, cluster: Kubectl,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    assert kube.namespace is not None
    namespace = cluster.get("namespace", kube.namespace) or {}
    enforced = (namespace["metadata"].get("labels") or {}).get(
        "pod-security.kubernetes.io/enforce")
    if enforced != "restricted":
        pytest.skip(f"namespace {kube.namespace} does not enforce the restricted Pod Security "
                    "Standard (the suite labels only namespaces it creates; "
                    "E2E_POD_SECURITY=restricted)")
    name = make_pool(small_pool(f"e2e-pss-{run_id}", e2e_config.worker_image,
                                redis_secret=e2e_config.redis_secret))
    pools.wait_serving(name, 1)
    (pod,) = pools.live_pods(name)
    security = pod["spec"].get("securityContext") or {}
    assert security.get("runAsNonRoot") is True
    assert (security.get("seccompProfile") or {}).get("type") == "RuntimeDefault"
    for container in pod["spec"]["containers"]:
        context = container.get("securityContext") or {}
        assert context.get("allowPrivilegeEscalation") is False
        assert (context.get("capabilities") or {}).get("drop") == ["ALL"]
        assert context.get("readOnlyRootFilesystem") is True


def test_two_pools_on_one_queue_are_degraded_until_one_goes(
    make_pool: Callable[[Manifest], str], pools: Pools, waiter: Waiter,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    """Their workers would run each other's tasks: both name the other in a Degraded condition
    (QueueShared) and keep serving; the survivor's condition clears."""
    queue = f"e2e-shared-{run_id}"
    first, second = (
        make_pool(small_pool(f"e2e-shared-{n}-{run_id}", e2e_config.worker_image,
                             redis_secret=e2e_config.redis_secret, queue=queue))
        for n in (1, 2))

    def degraded(name: str) -> dict[str, Any] | None:
        for condition in pools.status(name).get("conditions") or []:
            if condition["type"] == "Degraded" and condition["status"] == "True":
                return dict(condition)
        return None

    for name, other in ((first, second), (second, first)):
        condition = waiter.until(partial(degraded, name), bool, timeout=120,
                                 what=f"pool {name} to report its shared queue")
        assert condition is not None
        assert condition["reason"] == "QueueShared"
        assert f"queue '{queue}'" in condition["message"] and other in condition["message"]
    pools.wait_serving(first, 1)

    pools.delete(second)
    waiter.true(lambda: degraded(first) is None, timeout=120,
                what=f"pool {first}'s Degraded condition to clear")


def test_a_pool_with_a_task_command_runs_its_program(
    make_pool: Callable[[Manifest], str], pools: Pools, cli: AgentpoolCli,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    """spec.worker.taskCommand instead of a handler: each task's payload reaches the program
    on stdin and its JSON result line comes back, in a pod under the pool's security context;
    the program reads its pod's label (spec.worker.podLabels) from a volume the pool mounts
    (spec.worker.volumes, volumeMounts), and a file an init container (spec.worker.
    initContainers, in the pod's restricted security context) left in /tmp."""
    name = make_pool(command_pool(f"e2e-command-{run_id}", e2e_config.worker_image,
                                  redis_secret=e2e_config.redis_secret))
    pools.wait_serving(name, 1)
    payloads = [{"prompt": f"command task {i}"} for i in range(3)]
    ids = cli.submit(name, payloads)
    outcomes = [cli.wait(name, task_id, timeout=120) for task_id in ids]
    assert [o["state"] for o in outcomes] == ["succeeded"] * len(payloads)
    assert [o["result"] for o in outcomes] == [
        {"echo": payload, "attempt": 1, "label": COMMAND_AGENT_LABEL[1], "init": INIT_MARKER[1]}
        for payload in payloads]


def test_a_schedule_submits_a_task_that_the_pool_runs(
    make_pool: Callable[[Manifest], str], pools: Pools, waiter: Waiter, cli: AgentpoolCli,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    """spec.schedules on a real API server: within two minutes the operator submits the
    schedule's task (status.schedules names it) and the pool's worker runs it."""
    name = make_pool(scheduled_pool(f"e2e-scheduled-{run_id}", e2e_config.worker_image,
                                    redis_secret=e2e_config.redis_secret))
    pools.wait_serving(name, 1)

    def submitted() -> dict[str, Any] | None:
        for entry in pools.status(name).get("schedules") or []:
            if entry.get("name") == "every-minute" and entry.get("lastTaskId"):
                return dict(entry)
        return None

    entry = waiter.until(submitted, bool, timeout=150,
                         what=f"pool {name}'s schedule to submit a task")
    assert entry is not None
    assert entry["nextScheduleTime"] > entry["lastScheduleTime"]
    outcome = cli.wait(name, entry["lastTaskId"], timeout=120)
    assert outcome["state"] == "succeeded"
    assert outcome["payload"] == {"mean_seconds": 0.5, "prompt": "scheduled"}


def test_a_pools_tenant_weights_reach_its_queue_and_follow_an_edit(
    make_pool: Callable[[Manifest], str], pools: Pools, waiter: Waiter, cli: AgentpoolCli,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    """spec.tenants on a real API server: kept as sent (not pruned), written by the operator
    to the queue, where `agentpool tenants` reads them, and changed by a patch; with the caps
    on runs at once (a tenant listed without a weight gets the schema's default, 1)."""
    name = make_pool(weighted_pool(f"e2e-weighted-{run_id}", e2e_config.worker_image,
                                   redis_secret=e2e_config.redis_secret))
    stored = pools.get(name)
    assert stored is not None
    assert stored["spec"]["tenants"] == [{"name": "gold", "weight": 4},
                                         {"name": "Acme Corp", "weight": 2}]
    cli.submit(name, [{"mean_seconds": 0.1}])

    def weights() -> dict[str | None, int]:
        doc = cli.json("tenants", "--queue", name, timeout=30)
        return {t["tenant"]: t["weight"] for t in doc["tenants"]}

    def caps() -> dict[str | None, int | None]:
        doc = cli.json("tenants", "--queue", name, timeout=30)
        return {t["tenant"]: t["max_running"] for t in doc["tenants"]}

    waiter.until(weights, lambda w: w.get("gold") == 4 and w.get("Acme Corp") == 2,
                 timeout=60, what=f"pool {name}'s weights on its queue")
    patch: dict[str, Any] = {"spec": {"tenants": [{"name": "gold", "weight": 9}]}}
    pools.kube("patch", "agentpool", name, "--type", "merge", "--patch", json.dumps(patch))
    waiter.until(weights, lambda w: w.get("gold") == 9 and "Acme Corp" not in w,
                 timeout=60, what=f"pool {name}'s new weights on its queue")
    patch = {"spec": {"tenants": [{"name": "gold", "weight": 9, "maxRunning": 2},
                                  {"name": "one-at-a-time", "maxRunning": 1}],
                      "tenantMaxRunning": 5}}
    pools.kube("patch", "agentpool", name, "--type", "merge", "--patch", json.dumps(patch))
    stored = pools.get(name)
    assert stored is not None
    assert stored["spec"]["tenants"][1] == {"name": "one-at-a-time", "weight": 1,
                                            "maxRunning": 1}
    waiter.until(caps, lambda c: c.get("gold") == 2 and c.get("one-at-a-time") == 1
                 and c.get(None) is None, timeout=60, what=f"pool {name}'s caps on its queue")


def test_a_pool_whose_image_cannot_be_pulled_says_why(
    make_pool: Callable[[Manifest], str], pools: Pools, waiter: Waiter,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    """A worker image no registry has: the kubelet's ErrImagePull / ImagePullBackOff reaches
    the pool's Degraded condition (PodsFailing) with the kubelet's message, naming the image."""
    image = f"registry.invalid/agentpool/no-such-worker:{run_id}"
    name = make_pool(small_pool(f"e2e-badimage-{run_id}", image,
                                redis_secret=e2e_config.redis_secret))

    def failing() -> dict[str, Any] | None:
        for condition in pools.status(name).get("conditions") or []:
            if (condition["type"] == "Degraded" and condition["status"] == "True"
                    and condition["reason"] == "PodsFailing"):
                return dict(condition)
        return None

    condition = waiter.until(failing, bool, timeout=180,
                             what=f"pool {name} to report its image pull failing")
    assert condition is not None
    assert "ErrImagePull" in condition["message"] or "ImagePullBackOff" in condition["message"]
    assert image in condition["message"]
