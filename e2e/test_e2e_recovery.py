"""A busy worker pod deleted: its tasks go back to the queue and finish elsewhere."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from e2e_cli import AgentpoolCli
from e2e_config import E2EConfig
from e2e_kube import Waiter
from e2e_manifests import RECOVERY_POOL_REPLICAS, Manifest, recovery_pool, recovery_tasks
from e2e_pools import Pools

pytestmark = pytest.mark.e2e

SUBMIT_TIMEOUT = 900.0


def busiest(workers: list[dict[str, Any]], pods: set[str]) -> dict[str, Any] | None:
    """The worker (of one of `pods`) running the most tasks, if any runs one."""
    candidates = [w for w in workers if w["pod"] in pods and w["in_flight"] > 0]
    return max(candidates, key=lambda w: w["in_flight"], default=None)


def test_deleted_busy_pod_has_its_tasks_requeued_and_finished(
    make_pool: Callable[[Manifest], str], pools: Pools, cli: AgentpoolCli, waiter: Waiter,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    name = make_pool(recovery_pool(f"e2e-recover-{run_id}", e2e_config.worker_image,
                                   redis_secret=e2e_config.redis_secret))
    pools.wait_serving(name, RECOVERY_POOL_REPLICAS)
    pods = {p["metadata"]["name"] for p in pools.live_pods(name)}
    waiter.until(lambda: {w["pod"] for w in cli.workers(name)}, lambda seen: pods <= seen,
                 timeout=120, what=f"workers of pods {sorted(pods)} heart-beating")

    tasks = recovery_tasks()
    submission = cli.submit_and_wait(name, tasks, SUBMIT_TIMEOUT * e2e_config.timeout_scale)
    busy = waiter.until(lambda: busiest(cli.workers(name), pods), lambda w: w is not None,
                        timeout=120, what="a worker pod running tasks", interval=1)
    assert busy is not None
    victim, held = busy["pod"], busy["in_flight"]

    # Like a node loss: the pod object goes at once and its container is killed.
    pools.kube("delete", "pod", victim, "--grace-period=0", "--force", "--wait=false")

    # recoveredTasks counts only what the operator put back (a worker's own hand-back or a
    # surviving worker's reaping of expired leases does not count there)
    waiter.until(lambda: pools.status(name).get("recoveredTasks", 0), lambda n: n >= 1,
                 timeout=180, interval=1,
                 what=f"the operator to requeue the {held} task(s) of deleted pod {victim}")

    result = submission.finish(timeout=SUBMIT_TIMEOUT * e2e_config.timeout_scale + 60)
    assert result.returncode == 0, f"agentpool submit --wait failed: {result.stderr}"
    outcome = json.loads(result.stdout)
    assert outcome["pending"] == []
    assert [t["state"] for t in outcome["tasks"]] == ["succeeded"] * len(tasks)
    counters = cli.counters(name)
    assert counters["succeeded"] == len(tasks)
    assert counters["dead"] == 0
    assert counters["requeued"] >= 1
    assert pools.status(name)["recoveredTasks"] >= 1

    def replaced() -> set[str]:
        pools.fail_on_fatal_pods(name)
        return {p["metadata"]["name"] for p in pools.live_pods(name)
                if any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in (p.get("status") or {}).get("conditions") or [])}

    ready = waiter.until(replaced, lambda ready: len(ready) == RECOVERY_POOL_REPLICAS
                         and victim not in ready, timeout=300,
                         what=f"pool {name} back to {RECOVERY_POOL_REPLICAS} ready pods "
                         f"without {victim}")
    assert victim not in ready
