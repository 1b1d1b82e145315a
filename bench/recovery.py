"""How fast the operator gives a dead worker's tasks back (a benchmark, not a test).

    .venv/bin/python bench/recovery.py [--runs 10] [--lease-runs 5] [--lease 2] [--poll 1]
                                       [--outage-runs 5] [--fallback-runs 2] [--outage-lease 30]

The real operator (kopf, in its own thread) runs against kmock's Kubernetes emulation and a
private redis-server. kmock has no kubelet or controllers, so the benchmark creates the worker
pods itself and leases tasks in Redis under `<pod>:<instance>`, as a worker would. Prints:

- pod deletion → tasks claimable: from just before the DELETE request of a busy pod (kmock
  emits the DELETED watch event while answering it) until another worker's claim gets every
  task back; the pool polls every 30 s, so this is the pod-event path alone (target ≤ 1 s);
- silent death → requeue: a worker leases tasks and then never heart-beats again while its pod
  looks healthy; from the claim (the last time its lease was set) until another worker's claim
  gets every task back, through lease expiry and the pool's poll (target ≤ lease + poll).
- operator start → tasks requeued, after an outage: an operator runs the pool, a worker leases
  tasks (with the worker's default 30 s lease), the operator stops, the busy pod is deleted
  while none runs (so no one sees its event), and a new operator starts 1 s later; from the
  new operator's start until every task is back in the queue. Each run has a fresh emulated
  cluster. Once as the operator is (it checks the queue's workers against the existing pods
  when a pool's loop starts), and once with that check switched off: the fallback, lease
  expiry (its line shows how much of the lease was left when the operator started).

Claims are tried every 5 ms, which bounds the resolution; in the outage runs the queue is read
every 5 ms instead, so nothing but the operator touches the tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from agentpool.protocol import TaskQueue, WorkerInfo, key_prefix
from agentpool.redis_server import RedisServer, free_port
from agentpool_operator import recovery_actions
from agentpool_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "operator")]

from kopf_bench import create_pool, emulated_cluster, operator_with_pools  # noqa: E402
from operator_harness import (  # noqa: E402
    NAMESPACE,
    Cluster,
    OperatorThread,
)

PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
TASKS_PER_POD = 5
PROBE_INTERVAL = 0.005
OUTAGE_SECONDS = 1.0
DEFAULT_POLL = 2.0


def pod_manifest(pool: str, name: str) -> dict[str, Any]:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "labels": {"agentpool.dev/pool": pool}},
        "spec": {"containers": [{"name": "worker", "image": "w:1"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": started}],
            "containerStatuses": [{"name": "worker", "restartCount": 0, "ready": True,
                                   "state": {"running": {"startedAt": started}}}],
        },
    }


async def lease(queue: TaskQueue, pod: str, lease_seconds: float) -> tuple[set[str], float]:
    worker = WorkerInfo(pod=pod, instance="i1", concurrency=TASKS_PER_POD)
    await queue.heartbeat(worker, {}, lease_seconds)
    await queue.submit_many([{"pod": pod, "n": n} for n in range(TASKS_PER_POD)])
    leased_at = time.perf_counter()
    batch = await queue.claim(worker.worker_id, TASKS_PER_POD, lease_seconds)
    assert len(batch.tasks) == TASKS_PER_POD
    return {task.id for task in batch.tasks}, leased_at


async def claimable(queue: TaskQueue, ids: set[str], timeout: float) -> float:
    """Claim until every task in `ids` was handed out again; the time that happened."""
    found: set[str] = set()
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        batch = await queue.claim("probe-0-0:p", TASKS_PER_POD, 60)
        found |= {task.id for task in batch.tasks}
        if ids <= found:
            moment = time.perf_counter()
            for task in batch.tasks:
                await queue.complete(task)
            return moment
        for task in batch.tasks:
            await queue.complete(task)
        await asyncio.sleep(PROBE_INTERVAL)
    raise TimeoutError(f"tasks not claimable within {timeout}s")


async def delete_path(cluster: Cluster, queue: TaskQueue, runs: int) -> list[float]:
    times = []
    for run in range(runs):
        pod = f"fast-{run}"
        await cluster.create(PODS, pod_manifest("fast", pod))
        ids, _ = await lease(queue, pod, 60)
        start = time.perf_counter()
        async with cluster.emulator.delete(f"{PODS}/{pod}") as response:
            assert response.status == 200
        times.append(await claimable(queue, ids, 10) - start)
    return times


async def lease_path(cluster: Cluster, queue: TaskQueue, runs: int,
                     lease_seconds: float) -> list[float]:
    times = []
    for run in range(runs):
        pod = f"slow-{run}"
        await cluster.create(PODS, pod_manifest("slow", pod))
        ids, leased_at = await lease(queue, pod, lease_seconds)
        times.append(await claimable(queue, ids, lease_seconds + 10) - leased_at)
    return times


async def all_queued(redis: aioredis.Redis, queue: str, ids: set[str], timeout: float) -> float:
    """Read the queue until every task in `ids` is waiting in it; the time that happened."""
    key, members = key_prefix(queue) + "queued", sorted(ids)
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(score is not None for score in await redis.zmscore(key, members)):
            return time.perf_counter()
        await asyncio.sleep(PROBE_INTERVAL)
    raise TimeoutError(f"tasks not requeued within {timeout}s")


@contextlib.contextmanager
def gone_pod_check_off() -> Iterator[None]:
    """The operator as it would be without its start-up check: only lease expiry is left."""
    async def nothing(*_: Any) -> int:
        return 0

    original = recovery_actions.recover_gone_pods
    setattr(recovery_actions, "recover_gone_pods", nothing)  # noqa: B010
    try:
        yield
    finally:
        setattr(recovery_actions, "recover_gone_pods", original)  # noqa: B010


async def outage_run(redis_url: str, redis: aioredis.Redis, pool: str,
                     lease_seconds: float) -> tuple[float, float]:
    """One outage: (operator start → every task queued again, lease left at the start)."""
    async with emulated_cluster(redis_url) as (cluster, _):
        first = OperatorThread(OperatorSettings(port=free_port()))
        await first.start()
        pod = f"{pool}-a"
        try:
            await create_pool(cluster, redis_url, pool, DEFAULT_POLL,
                              {"minReplicas": 1, "maxReplicas": 1})
            await cluster.create(PODS, pod_manifest(pool, pod))
            ids, leased_at = await lease(TaskQueue(redis, pool), pod, lease_seconds)
        finally:
            await first.stop()
        async with cluster.emulator.delete(f"{PODS}/{pod}") as response:
            assert response.status == 200
        await asyncio.sleep(OUTAGE_SECONDS)

        second = OperatorThread(OperatorSettings(port=free_port()))
        start = time.perf_counter()
        starting = asyncio.create_task(second.start())
        try:
            moment = await all_queued(redis, pool, ids, lease_seconds + 10)
            await starting
        finally:
            await second.stop()
        return moment - start, lease_seconds - (start - leased_at)


async def outage_path(runs: int, fallback_runs: int,
                      lease_seconds: float) -> tuple[list[float], list[float], list[float]]:
    """Start → requeue with the check, without it, and the lease left at those starts."""
    with RedisServer() as server:
        redis = aioredis.Redis.from_url(server.url)
        try:
            checked = [(await outage_run(server.url, redis, f"down-{run}", lease_seconds))[0]
                       for run in range(runs)]
            fallback, left = [], []
            with gone_pod_check_off():
                for run in range(fallback_runs):
                    took, remaining = await outage_run(server.url, redis, f"lease-{run}",
                                                       lease_seconds)
                    fallback.append(took)
                    left.append(remaining)
        finally:
            await redis.aclose()
    return checked, fallback, left


def summary(name: str, times: list[float], target: float) -> str:
    p50 = statistics.median(times)
    worst = max(times)
    verdict = "ok" if worst <= target else "OVER TARGET"
    return (f"{name:<50} runs={len(times):<3} p50={p50 * 1000:7.1f} ms  "
            f"max={worst * 1000:7.1f} ms  target≤{target * 1000:.0f} ms  {verdict}")


async def main(args: argparse.Namespace) -> None:
    pools = {pool: (poll, {"minReplicas": 1, "maxReplicas": 1})
             for pool, poll in (("fast", 30.0), ("slow", args.poll))}
    async with operator_with_pools(pools) as (cluster, redis):
        fast = await delete_path(cluster, TaskQueue(redis, "fast"), args.runs)
        slow = await lease_path(cluster, TaskQueue(redis, "slow"), args.lease_runs, args.lease)
    checked, fallback, left = await outage_path(args.outage_runs, args.fallback_runs,
                                                args.outage_lease)
    print(summary("pod deletion -> tasks claimable", fast, 1.0))
    print(summary(f"silent death -> requeue (lease {args.lease:g}s, poll {args.poll:g}s)",
                  slow, args.lease + args.poll))
    print(summary("outage: operator start -> requeued", checked, 1.0))
    if fallback:
        print(summary(f"outage, lease expiry only ({statistics.median(left):.1f}s of "
                      f"{args.outage_lease:g}s left)", fallback, max(left) + DEFAULT_POLL))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="pod deletions")
    parser.add_argument("--lease-runs", type=int, default=5, help="silent deaths")
    parser.add_argument("--lease", type=float, default=2.0, help="lease seconds")
    parser.add_argument("--poll", type=float, default=1.0, help="the pool's pollSeconds")
    parser.add_argument("--outage-runs", type=int, default=5,
                        help="operator outages during which a busy pod goes away")
    parser.add_argument("--fallback-runs", type=int, default=2,
                        help="the same with the start-up check off (each waits for the lease)")
    parser.add_argument("--outage-lease", type=float, default=30.0,
                        help="lease seconds in the outage runs")
    asyncio.run(main(parser.parse_args()))
