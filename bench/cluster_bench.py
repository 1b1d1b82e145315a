"""Redis Cluster: 1 shard against 3 shards (all on loopback), several queues drained at once.

    .venv/bin/python bench/cluster_bench.py                       # 1 and 3 shards, 6 queues
    .venv/bin/python bench/cluster_bench.py --shards 1,2,3 --queues 12 --tasks 2000

For each shard count it starts a Redis Cluster of that many primaries
(agentpool.redis_server.RedisCluster), fills `--queues` queues (names chosen so that they
spread evenly over the primaries) with `--tasks` no-op tasks each, then drains every queue at
once with one drainer process per queue: claim up to `--batch` tasks, complete them in one
pipelined round trip, repeat, the loop a worker runs without a handler. Reported per run:

- aggregate drain rate: all tasks over the time from the common start to the last drainer's
  end;
- Redis CPU per task: the user + system CPU every redis-server spent during the drain
  (``INFO cpu``, summed over the primaries) over the tasks drained;
- client CPU per task: what the drainer processes spent (their own CPU time, start to end);
- the busiest shard's share of the Redis CPU, and how many queues each shard holds.

Raw figures go to bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
import uuid
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from redis.cluster import RedisCluster as SyncCluster

from agentpool.connection import redis_from_url, sync_redis_from_url
from agentpool.protocol import TaskQueue, key_prefix
from agentpool.redis_server import RedisCluster, sentinel_admin

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Run:
    shards: int
    queues: int
    tasks: int
    seconds: float
    tasks_per_second: float
    redis_cpu_us_per_task: float
    client_cpu_us_per_task: float
    busiest_shard_cpu_share: float
    queues_per_shard: list[int]


def spread_queue_names(url: str, count: int, shards: int) -> tuple[list[str], dict[str, int]]:
    """`count` queue names, as evenly spread over the primaries as `count` allows."""
    client: Any = sync_redis_from_url(url)
    try:
        per_node: dict[str, list[str]] = {n.name: [] for n in client.get_primaries()}
        quota = -(-count // shards)
        while sum(len(v) for v in per_node.values()) < count:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            node = client.get_node_from_key(key_prefix(name) + "queued").name
            if len(per_node[node]) < quota:
                per_node[node].append(name)
        names = [name for names in per_node.values() for name in names][:count]
        holders = {name: index for index, names_of in enumerate(per_node.values())
                   for name in names_of}
        return names, holders
    finally:
        client.close()


async def fill(url: str, names: list[str], tasks: int) -> None:
    redis = redis_from_url(url)
    try:
        for name in names:
            await TaskQueue(redis, name).submit_many([None] * tasks)
    finally:
        await redis.aclose()


def drain(url: str, name: str, tasks: int, batch: int, go: Event,
          out: multiprocessing.Queue[tuple[str, int, float, float]]) -> None:
    async def run() -> tuple[int, float, float]:
        redis = redis_from_url(url)
        queue = TaskQueue(redis, name)
        worker = f"bench-{os.getpid()}:{name}"
        await queue.figures()  # connect and learn the slot map before the start
        await asyncio.to_thread(go.wait)
        cpu = time.process_time()
        done = 0
        while done < tasks:
            claimed = (await queue.claim(worker, batch, 60)).tasks
            if not claimed:
                break
            await queue.complete_many([(task, None) for task in claimed])
            done += len(claimed)
        end = time.monotonic()
        cpu = time.process_time() - cpu
        await redis.aclose()
        return done, end, cpu

    done, end, cpu = asyncio.run(run())
    out.put((name, done, end, cpu))


def redis_cpu(ports: list[int]) -> list[float]:
    seconds = []
    for port in ports:
        with sentinel_admin(port) as node:
            info = node.info("cpu")
        seconds.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return seconds


def one_run(shards: int, queues: int, tasks: int, batch: int) -> Run:
    with RedisCluster(primaries=shards) as cluster:
        names, holders = spread_queue_names(cluster.url, queues, shards)
        asyncio.run(fill(cluster.url, names, tasks))
        context = multiprocessing.get_context("fork")
        go = context.Event()
        out: multiprocessing.Queue[tuple[str, int, float, float]] = context.Queue()
        drainers = [context.Process(target=drain, args=(cluster.url, name, tasks, batch, go, out))
                    for name in names]
        for process in drainers:
            process.start()
        time.sleep(2.0)  # every drainer connected and waiting
        cpu_before = redis_cpu(cluster.ports)
        start = time.monotonic()
        go.set()
        results = [out.get(timeout=600) for _ in drainers]
        for process in drainers:
            process.join()
        cpu_after = redis_cpu(cluster.ports)
        check: SyncCluster = sync_redis_from_url(cluster.url)  # type: ignore[assignment]
        try:
            left = sum(int(check.zcard(key_prefix(name) + "queued")) for name in names)
        finally:
            check.close()
    drained = sum(done for _, done, _, _ in results)
    if left or drained != queues * tasks:
        raise SystemExit(f"drained {drained} of {queues * tasks} tasks, {left} left queued")
    seconds = max(end for _, _, end, _ in results) - start
    client_cpu = sum(cpu for _, _, _, cpu in results)
    spent = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
    per_shard = [0] * shards
    for name in names:
        per_shard[holders[name]] += 1
    return Run(
        shards=shards, queues=queues, tasks=drained, seconds=round(seconds, 2),
        tasks_per_second=round(drained / seconds),
        redis_cpu_us_per_task=round(sum(spent) / drained * 1e6, 1),
        client_cpu_us_per_task=round(client_cpu / drained * 1e6, 1),
        busiest_shard_cpu_share=round(max(spent) / sum(spent), 2),
        queues_per_shard=per_shard,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--shards", default="1,3", help="shard counts to run (default 1,3)")
    parser.add_argument("--queues", type=int, default=6)
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per queue")
    parser.add_argument("--batch", type=int, default=20, help="tasks per claim")
    args = parser.parse_args()
    runs = [one_run(int(s), args.queues, args.tasks, args.batch)
            for s in args.shards.split(",")]
    print(f"{'shards':>6} {'queues':>6} {'tasks':>7} {'seconds':>8} {'tasks/s':>8} "
          f"{'Redis CPU/task':>15} {'client CPU/task':>16} {'busiest shard':>14}  "
          "queues per shard")
    for r in runs:
        print(f"{r.shards:>6} {r.queues:>6} {r.tasks:>7} {r.seconds:>8} {r.tasks_per_second:>8} "
              f"{r.redis_cpu_us_per_task:>12} µs {r.client_cpu_us_per_task:>13} µs "
              f"{r.busiest_shard_cpu_share:>13.0%}  {r.queues_per_shard}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cluster.json").write_text(json.dumps(
        {"cpus": os.cpu_count(), "load_average": os.getloadavg(),
         "runs": [asdict(r) for r in runs]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
