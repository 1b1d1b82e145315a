"""Queue-depth scaling on a real cluster: up for a backlog, back down to minReplicas once the
queue is empty, and no task interrupted on the way down, though the long tasks outlast the
pool's drainSeconds: a pod chosen for removal keeps its replica until its runs end."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from e2e_cli import AgentpoolCli
from e2e_config import E2EConfig
from e2e_kube import Waiter
from e2e_manifests import SCALE_POOL_MIN, Manifest, scale_pool, scale_tasks
from e2e_pools import Pools

pytestmark = pytest.mark.e2e

SUBMIT_TIMEOUT = 1200.0
"""Bound on the whole batch: the long tasks' worst case is ten times their 60 s mean."""


def test_backlog_scales_up_and_empty_queue_scales_down_without_interrupting_tasks(
    make_pool: Callable[[Manifest], str], pools: Pools, cli: AgentpoolCli, waiter: Waiter,
    e2e_config: E2EConfig, run_id: str,
) -> None:
    name = make_pool(scale_pool(f"e2e-scale-{run_id}", e2e_config.worker_image,
                                redis_secret=e2e_config.redis_secret))
    pools.wait_serving(name, SCALE_POOL_MIN)
    waiter.until(lambda: pools.replicas(name), lambda r: r[0] == SCALE_POOL_MIN,
                 timeout=120, what=f"pool {name}: status.desiredReplicas == minReplicas")

    tasks = scale_tasks()
    submission = cli.submit_and_wait(name, tasks, SUBMIT_TIMEOUT * e2e_config.timeout_scale)

    waiter.until(lambda: pools.replicas(name), lambda r: r[0] > SCALE_POOL_MIN, timeout=120,
                 what=f"status.desiredReplicas above {SCALE_POOL_MIN} for {len(tasks)} tasks",
                 interval=1)

    def scaled_up() -> tuple[int, int, int]:
        pools.fail_on_fatal_pods(name)
        return pools.replicas(name)

    waiter.until(scaled_up, lambda r: r[1] > SCALE_POOL_MIN and r[2] > SCALE_POOL_MIN,
                 timeout=300, what="the Deployment to follow: more than minReplicas pods ready",
                 interval=1)

    peak = {"replicas": 0}

    def deployment_replicas() -> int:
        replicas = pools.replicas(name)[1]
        peak["replicas"] = max(peak["replicas"], replicas)
        return replicas

    waiter.until(deployment_replicas, lambda replicas: replicas < peak["replicas"],
                 timeout=600, what="the first scale-down once the backlog is gone", interval=1)
    in_flight_at_scale_down = cli.stats(name)["in_flight"]

    result = submission.finish(timeout=SUBMIT_TIMEOUT * e2e_config.timeout_scale + 60)
    assert result.returncode == 0, f"agentpool submit --wait failed: {result.stderr}"
    outcome = json.loads(result.stdout)
    assert outcome["pending"] == []
    assert [t["state"] for t in outcome["tasks"]] == ["succeeded"] * len(tasks)
    rerun = {t["id"]: t["attempts"] for t in outcome["tasks"] if t["attempts"] != 1}
    assert not rerun, f"tasks run more than once (interrupted by the scale-down): {rerun}"

    def settled() -> tuple[tuple[int, int, int], int]:
        return pools.replicas(name), len(pools.pods(name))

    waiter.until(settled, lambda s: s[0][:2] == (SCALE_POOL_MIN, SCALE_POOL_MIN)
                 and s[1] == SCALE_POOL_MIN, timeout=300,
                 what=f"pool {name} back at minReplicas: status, Deployment and pods")

    counters = cli.counters(name)
    assert counters["succeeded"] == len(tasks)
    interruptions = {k: counters[k] for k in ("requeued", "retried", "failed", "dead")
                     if counters[k]}
    assert not interruptions, f"the scale-down interrupted tasks: {interruptions}"
    assert in_flight_at_scale_down > 0, (
        "inconclusive: no task was running when the pool first scaled down, so this run "
        "did not show that a scale-down spares busy workers")
