"""A rollout lets the old pods finish their runs: with drainSeconds at its default
(taskTimeoutSeconds), the pod a rollout replaces gets SIGTERM, stops claiming and runs its task
to the end while it terminates, and the new pod serves meanwhile. Nothing is requeued."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from e2e_cli import AgentpoolCli
from e2e_config import E2EConfig
from e2e_kube import Waiter, is_ready, is_terminating
from e2e_manifests import ROLLOUT_TASK, Manifest, rollout_pool
from e2e_pools import Pools

pytestmark = pytest.mark.e2e

BUSY_LABEL = "agentpool.dev/busy"


def test_a_rollout_lets_the_old_pod_finish_its_run(
    make_pool: Callable[[Manifest], str], pools: Pools, cli: AgentpoolCli, waiter: Waiter,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    name = make_pool(rollout_pool(f"e2e-rollout-{run_id}", e2e_config.worker_image,
                                  redis_secret=e2e_config.redis_secret))
    pools.wait_serving(name, 1)
    (task_id,) = cli.submit(name, [ROLLOUT_TASK])
    busy = waiter.until(
        lambda: pools.kube.items("pods", f"agentpool.dev/pool={name},{BUSY_LABEL}=true"),
        lambda found: len(found) == 1, timeout=120, interval=1,
        what=f"a pod of {name} running the task")
    old = busy[0]["metadata"]["name"]

    # A new pod template (an annotation of the pool's pods): the Deployment rolls the pool.
    patch = {"spec": {"worker": {"podAnnotations": {"e2e.agentpool.dev/rollout": run_id}}}}
    pools.kube("patch", "agentpool", name, "--type", "merge", "--patch", json.dumps(patch))
    waiter.until(lambda: [p for p in pools.live_pods(name)
                          if p["metadata"]["name"] != old and is_ready(p)],
                 bool, timeout=300, interval=1, what=f"a new ready pod of {name}")
    stopping = waiter.until(lambda: pools.kube.get("pod", old),
                            lambda pod: pod is None or is_terminating(pod), timeout=120,
                            interval=1, what=f"the rollout stopping {old}")
    running = cli.json("get", "--queue", name, task_id)
    assert stopping is not None and running["state"] == "running", (
        "the task should still run on the terminating pod; the test's premise failed: "
        f"{running}")

    info = cli.wait(name, task_id, timeout=600 * e2e_config.timeout_scale)
    assert (info["state"], info["attempts"]) == ("succeeded", 1), info
    waiter.until(lambda: pools.kube.get("pod", old), lambda pod: pod is None, timeout=120,
                 interval=1, what=f"{old} gone once its run ended")
    assert cli.counters(name)["requeued"] == 0
