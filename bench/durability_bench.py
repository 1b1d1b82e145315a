"""What ``durability: replicated`` costs, and what Redis holds per task (a benchmark).

    .venv/bin/python -m bench.durability_bench [--tasks 20000] [--repeats 3] [--json]

A primary and one replica on loopback (private redis-servers). For each durability:

- submits/s: one producer submitting one task at a time; 32 producers at once (one
  connection each at most); ``submit_many`` in pipelined batches of 500;
- drain tasks/s: 2 ``agentpool-worker`` processes (concurrency 100, handler
  ``agentpool_worker.builtin:noop``) on a pre-loaded queue, first start to last finish on
  Redis's clock, as bench/worker_bench.py measures it.

Each figure is the median of ``--repeats`` runs, none and replicated in turn. Then the sizing
figures of docs/redis.md, on the primary: memory (``used_memory``) per queued
task and per finished task kept for the result TTL (payload and result of about 100 bytes of
JSON each), and connections: a worker's (idle, and with ``concurrency`` tasks running) and
the operator's shared client after its rounds on 20 pools.

Loopback hides the network: a replica's acknowledgement costs one round trip to the replica
more than this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from agentpool.durability import Durability
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer, free_port, sentinel_admin
from bench.worker_bench import start_worker, stop, throughput, wait_for

PAYLOAD = {"prompt": "summarise the attached ticket and propose a reply", "ticket": 123456,
           "tenant": "acme"}
FAST_SYNC = ("--repl-diskless-sync-delay", "0")


async def submits(url: str, durability: Durability, count: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    queue = TaskQueue(client, f"sub-{uuid.uuid4().hex[:6]}", durability=durability)
    rates: dict[str, float] = {}
    started = time.perf_counter()
    for _ in range(count // 10):
        await queue.submit(PAYLOAD)
    rates["one_at_a_time"] = count // 10 / (time.perf_counter() - started)

    async def producer(n: int) -> None:
        for _ in range(n):
            await queue.submit(PAYLOAD)

    started = time.perf_counter()
    await asyncio.gather(*(producer(count // 32) for _ in range(32)))
    rates["32_producers"] = count // 32 * 32 / (time.perf_counter() - started)
    started = time.perf_counter()
    await queue.submit_many([PAYLOAD] * count)
    rates["submit_many"] = count / (time.perf_counter() - started)
    await client.aclose()
    return rates


async def used_memory(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


async def sizing(url: str, count: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    name = f"size-{uuid.uuid4().hex[:6]}"
    queue = TaskQueue(client, name)
    await queue.submit(PAYLOAD)  # the queue's own keys exist before the baseline
    before = await used_memory(client)
    await queue.submit_many([PAYLOAD] * count)
    queued = await used_memory(client)
    clients_before = len(await client.client_list())
    port = free_port()
    proc = start_worker(url, name, "bench_handlers:reply", 20, "size-0", port)
    try:
        async def drained() -> bool:
            figures = await queue.figures()
            return figures.queued == 0 and figures.in_flight == 0
        await wait_for(drained, 300, "the queue to drain")
        worker_connections = len(await client.client_list()) - clients_before
    finally:
        stop([proc])
    finished = await used_memory(client)
    await client.aclose()
    return {
        "bytes_per_queued_task": (queued - before) / count,
        "bytes_per_finished_task": (finished - before) / count,
        "worker_connections": worker_connections,
    }


async def operator_connections(url: str, pools: int) -> int:
    from agentpool_operator.redis_access import RedisClients, read_figures

    admin = aioredis.Redis.from_url(url)
    before = len(await admin.client_list())
    clients = RedisClients()
    try:
        for round_ in range(3):
            for index in range(pools):
                queue = TaskQueue(await clients.client("ns", f"pool-{index}", url),
                                  f"op-{index}")
                await read_figures(queue)
                await queue.reap_expired()
            del round_
        return len(await admin.client_list()) - before
    finally:
        await clients.close()
        await admin.aclose()


async def run(tasks: int, repeats: int) -> dict[str, Any]:
    with RedisServer(extra_args=FAST_SYNC) as primary, \
            RedisServer(replica_of=primary.port, extra_args=FAST_SYNC):
        deadline = time.monotonic() + 30
        with sentinel_admin(primary.port) as admin:
            while (admin.info("replication").get("slave0") or {}).get("state") != "online":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not come online")
                await asyncio.sleep(0.05)
        report: dict[str, Any] = {"tasks": tasks, "repeats": repeats}
        runs: dict[str, list[dict[str, Any]]] = {d.value: [] for d in Durability}
        for repeat in range(repeats):
            # alternate the order: a busy moment of the machine hits both alike
            order = list(Durability) if repeat % 2 == 0 else list(reversed(Durability))
            for durability in order:
                env = {"AGENTPOOL_DURABILITY": durability.value}
                runs[durability.value].append({
                    "drain": await throughput_with(primary.url, tasks, env),
                    **await submits(primary.url, durability, tasks),
                })
        for name, rows in runs.items():
            median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
            report[name] = {
                "submits_per_second": {k: v for k, v in median.items() if k != "drain"},
                "drain_tasks_per_second": median["drain"],
            }
        report["sizing"] = await sizing(primary.url, tasks)
        report["sizing"]["operator_connections_20_pools"] = await operator_connections(
            primary.url, 20)
    return report


async def throughput_with(url: str, tasks: int, env: dict[str, str]) -> float:
    return (await throughput(url, 2, tasks, 100, env))["tasks_per_second"]


def render(report: dict[str, Any]) -> str:
    lines = [f"{'':28} {'none':>10} {'replicated':>11} {'cost':>6}"]
    rows = [("submits/s, one at a time", "one_at_a_time"),
            ("submits/s, 32 producers", "32_producers"),
            ("submits/s, submit_many", "submit_many")]
    for label, key in rows:
        a = report["none"]["submits_per_second"][key]
        b = report["replicated"]["submits_per_second"][key]
        lines.append(f"{label:28} {a:10.0f} {b:11.0f} {1 - b / a:6.0%}")
    a, b = report["none"]["drain_tasks_per_second"], report["replicated"][
        "drain_tasks_per_second"]
    lines.append(f"{'drain tasks/s, 2 workers':28} {a:10.0f} {b:11.0f} {1 - b / a:6.0%}")
    size = report["sizing"]
    lines += [
        f"memory per queued task      {size['bytes_per_queued_task']:.0f} B",
        f"memory per finished task    {size['bytes_per_finished_task']:.0f} B (result TTL)",
        f"connections per worker      {size['worker_connections']}",
        f"operator connections        {size['operator_connections_20_pools']} (20 pools)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.durability_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each durability, alternating; medians are reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(run(args.tasks, args.repeats))
    print(json.dumps(report, indent=2) if args.json else render(report))


if __name__ == "__main__":
    main()
