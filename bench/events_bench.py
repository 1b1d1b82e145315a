"""What a task event costs (a benchmark, not a test).

    .venv/bin/python bench/events_bench.py [--tasks 2000] [--concurrency 100]

One ``agentpool-worker`` process (handler ``bench_handlers:emitter``: emits N token-sized
events, then returns) drains a pre-loaded queue, for N = 0, 10 and 100 events per task. Printed
per N: tasks/s and events/s (Redis's clock, first start to last finish), worker round trips
per task (its own counter), and CPU time per event beyond the N = 0 run, in the worker process
(``/proc/<pid>/stat``) and in redis-server (``INFO cpu``). Then the time of one
``checkpoint`` call (a 1 KiB state, one client, one call at a time: a round trip plus the
fenced write). Private redis-server on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from worker_bench import scrape_round_trips, start_worker, stop, wait_for

from agentpool.protocol import TaskQueue, encode_checkpoint
from agentpool.redis_server import RedisServer, free_port

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def redis_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(url: str, tasks: int, events: int, concurrency: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    name = f"ev-{uuid.uuid4().hex[:6]}"
    queue = TaskQueue(client, name)
    port = free_port()
    proc = start_worker(url, name, "bench_handlers:emitter", concurrency, "bench-ev", port)
    try:
        async def registered() -> bool:
            return len(await queue.workers()) >= 1
        await wait_for(registered, 30, "the worker to register")
        worker_before, redis_before = cpu_seconds(proc.pid), await redis_cpu(client)
        trips_before = scrape_round_trips(port)
        ids = await queue.submit_many([{"events": events}] * tasks)

        async def drained() -> bool:
            f = await queue.figures()
            return f.queued == 0 and f.in_flight == 0
        await wait_for(drained, 600, "the queue to drain")
        worker_cpu = cpu_seconds(proc.pid) - worker_before
        server_cpu = await redis_cpu(client) - redis_before
        trips = scrape_round_trips(port) - trips_before
    finally:
        stop([proc])
    first, last = None, 0
    async with client.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.hmget(queue.task_key(task_id), "started", "finished")
        rows = await pipe.execute()
    for started, finished in rows:
        first = int(started) if first is None else min(first, int(started))
        last = max(last, int(finished))
    await client.aclose()
    seconds = max(0.001, (last - (first or 0)) / 1000)
    return {"tasks_per_second": tasks / seconds, "events_per_second": tasks * events / seconds,
            "round_trips_per_task": trips / tasks, "worker_cpu": worker_cpu,
            "redis_cpu": server_cpu}


async def checkpoint_seconds(url: str, calls: int = 2000) -> float:
    client = aioredis.Redis.from_url(url)
    queue = TaskQueue(client, f"cp-{uuid.uuid4().hex[:6]}")
    await queue.submit({})
    [task] = (await queue.claim("bench-cp:1", 1, 60)).tasks
    raw = encode_checkpoint({"messages": ["x" * 100] * 10})
    await queue.checkpoint(task, raw)
    began = time.perf_counter()
    for _ in range(calls):
        assert await queue.checkpoint(task, raw)
    elapsed = time.perf_counter() - began
    await client.aclose()
    return elapsed / calls


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
          f"{args.tasks} tasks, concurrency {args.concurrency}, one worker process")
    with RedisServer() as server:
        base = None
        for events in (0, 10, 100):
            r = await run(server.url, args.tasks, events, args.concurrency)
            line = (f"{events:>3} events/task: {r['tasks_per_second']:,.0f} tasks/s, "
                    f"{r['events_per_second']:,.0f} events/s, "
                    f"{r['round_trips_per_task']:.2f} round trips/task")
            if base is None:
                base = r
            else:
                n = args.tasks * events
                line += (f"; per event: worker CPU "
                         f"{(r['worker_cpu'] - base['worker_cpu']) / n * 1e6:.1f} us, redis CPU "
                         f"{(r['redis_cpu'] - base['redis_cpu']) / n * 1e6:.1f} us")
            print(line, flush=True)
        per_call = await checkpoint_seconds(server.url)
        print(f"checkpoint (1 KiB state): {per_call * 1e6:.0f} us per call", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
