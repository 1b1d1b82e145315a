"""How fast a backlog gets more workers asked for (a benchmark, not a test).

    .venv/bin/python bench/reaction.py [--runs 10] [--poll 2] [--burst 20]

Reaction time = from the moment a burst of tasks lands in an idle queue until the pool's
Deployment has its replicas raised (the PATCH the ReplicaSet acts on; pod start-up comes on
top, the same for every autoscaler). Target: at most pollSeconds + 1 s.

- agentpool, measured: the real operator (kopf, in its own thread) against kmock's Kubernetes
  emulation and a private redis-server, two pools polling every `--poll` seconds, one warm
  (minReplicas 1) and one scaled to zero (minReplicas 0). The Deployment is read every 5 ms,
  which bounds the resolution; bursts land at random moments of the pools' poll cycles.
- agentpool and KEDA, simulated: `agentpool simulate`'s autoscalers (ours; KEDA's defaults
  over the HPA: pollingInterval 30 s for 0 -> 1, an HPA sync every 15 s above that) on the
  same burst, arriving at 200 evenly spread moments of their cycles; the first scale-up after
  the burst is the reaction.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from agentpool.protocol import TaskQueue
from agentpool.scaling.policy import ScalingPolicy
from agentpool.scaling.simulation import (
    Autoscaler,
    KedaAutoscaler,
    KedaSettings,
    OurAutoscaler,
    TraceTask,
    simulate,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "operator")]

from kopf_bench import operator_with_pools  # noqa: E402
from operator_harness import (  # noqa: E402
    Cluster,
    eventually,
)

POOLS = {"warm": 1, "cold": 0}
"""Pool name -> minReplicas."""
READ_INTERVAL = 0.005
SIMULATED_PHASES = 200
SERVICE_SECONDS = 60.0


async def scaled_up(cluster: Cluster, pool: str, floor: int, start: float) -> float:
    while cluster.deployment(pool)["spec"]["replicas"] <= floor:
        if time.perf_counter() - start > 60:
            raise TimeoutError(f"{pool} did not scale up within 60 s")
        await asyncio.sleep(READ_INTERVAL)
    return time.perf_counter() - start


async def work_off(queue: TaskQueue) -> None:
    """Finish every queued task, as workers would."""
    while True:
        batch = await queue.claim("bench-0-0:w", 100, 60)
        if not batch.tasks:
            return
        await queue.complete_many([(task, None) for task in batch.tasks])


async def measure(cluster: Cluster, redis: aioredis.Redis, args: argparse.Namespace
                  ) -> dict[str, list[float]]:
    queues = {pool: TaskQueue(redis, pool) for pool in POOLS}
    times: dict[str, list[float]] = {pool: [] for pool in POOLS}
    for _ in range(args.runs):
        for pool, floor in POOLS.items():
            await eventually(lambda p=pool, f=floor: cluster.deployment(p)["spec"]["replicas"]
                             == f, within=30)
        await asyncio.sleep(random.uniform(0, args.poll))
        start = time.perf_counter()
        for queue in queues.values():
            await queue.submit_many([{"n": n} for n in range(args.burst)])
        reactions = await asyncio.gather(*(
            scaled_up(cluster, pool, floor, start) for pool, floor in POOLS.items()
        ))
        for pool, seconds in zip(POOLS, reactions, strict=True):
            times[pool].append(seconds)
        for queue in queues.values():
            await work_off(queue)
    return times


def simulated(make: Callable[[], Autoscaler], burst: int, cycle: float) -> list[float]:
    """First scale-up after a burst landing at evenly spread moments of one cycle."""
    times = []
    for step in range(SIMULATED_PHASES):
        arrival = 600.0 + cycle * (step + 0.5) / SIMULATED_PHASES
        trace = [TraceTask(arrival, SERVICE_SECONDS) for _ in range(burst)]
        run = simulate(trace, make())
        first = next(e.at for e in run.scale_events if e.at >= arrival and e.after > e.before)
        times.append(first - arrival)
    return times


def line(name: str, times: list[float], target: float | None) -> str:
    worst = max(times)
    verdict = "" if target is None else (
        f"target≤{target:.1f} s  " + ("ok" if worst <= target else "OVER TARGET"))
    return (f"{name:<44} runs={len(times):<4} p50={statistics.median(times):6.2f} s  "
            f"max={worst:6.2f} s  {verdict}")


async def main(args: argparse.Namespace) -> None:
    pools = {pool: (args.poll, {"minReplicas": floor, "maxReplicas": 10,
                                "scaleDownCooldownSeconds": 1})
             for pool, floor in POOLS.items()}
    async with operator_with_pools(pools) as (cluster, redis):
        measured = await measure(cluster, redis, args)

    target = args.poll + 1
    keda = KedaSettings()
    print(f"burst of {args.burst} tasks, tasksPerReplica 4, pollSeconds {args.poll:g}")
    for pool, floor in POOLS.items():
        print(line(f"agentpool measured, from {floor} replica(s)", measured[pool], target))
    for floor in POOLS.values():
        policy = ScalingPolicy(min_replicas=floor, max_replicas=10, poll_seconds=args.poll,
                               scale_down_cooldown_seconds=1)
        ours = simulated(lambda p=policy: OurAutoscaler(p), args.burst, args.poll)
        baseline = simulated(lambda p=policy: KedaAutoscaler(p, keda), args.burst,
                             keda.polling_interval)
        print(line(f"agentpool simulated, from {floor}", ours, target))
        print(line(f"KEDA defaults simulated, from {floor}", baseline, None))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="bursts per pool")
    parser.add_argument("--poll", type=float, default=2.0, help="the pools' pollSeconds")
    parser.add_argument("--burst", type=int, default=20, help="tasks per burst")
    asyncio.run(main(parser.parse_args()))
