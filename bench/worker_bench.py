"""Worker and producer figures on this machine (a benchmark, not a test).

    .venv/bin/python bench/worker_bench.py [--tasks 50000] [--concurrency 100]

Prints:
- no-op tasks/s through 1 and 2 worker processes (`agentpool-worker`, handler
  `agentpool_worker.builtin:noop`), measured on Redis's clock from the first start to the last
  finish of a pre-loaded queue, so process start-up is not counted;
- Redis round trips per task on the worker side: the workers' own request counter
  (``agentpool_worker_redis_round_trips_total``), and Redis's INFO commandstats calls of the
  commands a worker sends (EVALSHA, BLPOP, SCRIPT) — a pipelined batch is one round trip but
  many commands;
- p50/p99 submit→start latency at low load (one task every 10 ms, handler returns its start
  time; both clocks are this machine's);
- enqueue tasks/s from one producer, one submit at a time and batched (``submit_many``);
- a worker's resident memory idle, and busy with ``concurrency`` tasks in flight.

Each run uses a private redis-server on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
WORKER = [sys.executable, "-m", "agentpool_worker.main"]
WORKER_COMMANDS = ("evalsha", "eval", "blpop", "script|exists", "script|load", "smembers")


def start_worker(url: str, queue: str, handler: str, concurrency: int, pod: str,
                 port: int = 0, extra_env: dict[str, str] | None = None,
                 ) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
        "AGENTPOOL_REDIS_URL": url, "AGENTPOOL_QUEUE": queue, "AGENTPOOL_HANDLER": handler,
        "AGENTPOOL_CONCURRENCY": str(concurrency), "AGENTPOOL_POD_NAME": pod,
        "AGENTPOOL_PORT": str(port), "AGENTPOOL_LOG_LEVEL": "warning",
        "AGENTPOOL_DRAIN_SECONDS": "5", **(extra_env or {}),
    }
    return subprocess.Popen(WORKER, env=env, stdin=subprocess.DEVNULL)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def wait_for(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


async def command_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items()
               if k.removeprefix("cmdstat_") in WORKER_COMMANDS)


def scrape_round_trips(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("agentpool_worker_redis_round_trips_total{"))


async def throughput(url: str, workers: int, tasks: int, concurrency: int,
                     extra_env: dict[str, str] | None = None) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    queue_name = f"tp-{uuid.uuid4().hex[:6]}"
    queue = TaskQueue(client, queue_name)
    ids = await queue.submit_many([None] * tasks)
    before = await command_calls(client)
    ports = [free_port() for _ in range(workers)]
    procs = [start_worker(url, queue_name, "agentpool_worker.builtin:noop", concurrency,
                          f"bench-{i}", ports[i], extra_env) for i in range(workers)]
    try:
        async def drained() -> bool:
            f = await queue.figures()
            return f.queued == 0 and f.in_flight == 0
        await wait_for(drained, 300, "the queue to drain")
        commands = await command_calls(client) - before
        round_trips = sum(scrape_round_trips(p) for p in ports)
    finally:
        stop(procs)
    first, last = None, 0
    for start in range(0, len(ids), 1000):
        async with client.pipeline(transaction=False) as pipe:
            for task_id in ids[start:start + 1000]:
                pipe.hmget(queue.task_key(task_id), "started", "finished")
            rows = await pipe.execute()
        for started, finished in rows:
            s, f = int(started), int(finished)
            first = s if first is None else min(first, s)
            last = max(last, f)
    await client.aclose()
    seconds = max(0.001, (last - (first or 0)) / 1000)
    return {"tasks_per_second": tasks / seconds, "commands_per_task": commands / tasks,
            "round_trips_per_task": round_trips / tasks}


async def latency(url: str, count: int, concurrency: int) -> tuple[float, float, float, float]:
    client = aioredis.Redis.from_url(url)
    queue_name = f"lat-{uuid.uuid4().hex[:6]}"
    queue = TaskQueue(client, queue_name)
    port = free_port()
    proc = start_worker(url, queue_name, "bench_handlers:stamp", concurrency, "bench-lat", port)
    try:
        await wait_for(lambda: _registered(queue, 1), 30, "the worker to register")
        before = scrape_round_trips(port)
        sent: dict[str, float] = {}
        for _ in range(count):
            t = time.time()
            sent[await queue.submit(None)] = t
            await asyncio.sleep(0.01)
        waits = []
        for task_id, t in sent.items():
            info = await queue.wait(task_id, timeout=30)
            waits.append((float(info.result) - t) * 1000)
        round_trips = (scrape_round_trips(port) - before) / count
    finally:
        stop([proc])
        await client.aclose()
    waits.sort()
    return (statistics.median(waits), waits[int(len(waits) * 0.99) - 1], waits[-1],
            round_trips)


async def _registered(queue: TaskQueue, n: int) -> bool:
    return len(await queue.workers()) >= n


async def enqueue(url: str, single: int, batch: int) -> tuple[float, float]:
    client = aioredis.Redis.from_url(url)
    queue = TaskQueue(client, f"enq-{uuid.uuid4().hex[:6]}")
    t = time.perf_counter()
    for i in range(single):
        await queue.submit({"n": i})
    single_rate = single / (time.perf_counter() - t)
    t = time.perf_counter()
    await queue.submit_many({"n": i} for i in range(batch))
    batch_rate = batch / (time.perf_counter() - t)
    await client.aclose()
    return single_rate, batch_rate


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def memory(url: str, concurrency: int) -> tuple[float, float]:
    client = aioredis.Redis.from_url(url)
    queue_name = f"mem-{uuid.uuid4().hex[:6]}"
    queue = TaskQueue(client, queue_name)
    proc = start_worker(url, queue_name, "agentpool_worker.builtin:simulated_agent",
                        concurrency, "bench-mem")
    try:
        await wait_for(lambda: _registered(queue, 1), 30, "the worker to register")
        await asyncio.sleep(1.0)
        idle = rss_mb(proc.pid)
        await queue.submit_many([{"mean_seconds": 5}] * concurrency)

        async def busy() -> bool:
            return (await queue.figures()).in_flight >= concurrency
        await wait_for(busy, 30, "every slot to be busy")
        await asyncio.sleep(0.5)
        loaded = rss_mb(proc.pid)
    finally:
        stop([proc])
        await client.aclose()
    return idle, loaded


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
          f"no-op handler, concurrency {args.concurrency} per worker process")
    with RedisServer() as server:
        for workers in (1, 2):
            r = await throughput(server.url, workers, args.tasks, args.concurrency)
            print(f"throughput, {workers} worker process(es): "
                  f"{r['tasks_per_second']:,.0f} tasks/s "
                  f"({r['round_trips_per_task']:.3f} round trips/task, "
                  f"{r['commands_per_task']:.2f} worker commands/task)")
        p50, p99, worst, trips = await latency(server.url, 500, 4)
        print(f"submit->start latency at 100 tasks/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
              f"max {worst:.2f} ms ({trips:.2f} round trips/task at this load)")
        single, batch = await enqueue(server.url, 5_000, args.tasks)
        print(f"enqueue, one producer: {single:,.0f} tasks/s single, {batch:,.0f} tasks/s batch")
        idle, busy = await memory(server.url, args.concurrency)
        print(f"worker RSS: {idle:.1f} MB idle, {busy:.1f} MB with {args.concurrency} "
              f"simulated agents in flight")


if __name__ == "__main__":
    asyncio.run(main())
