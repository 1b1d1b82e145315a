"""What a fleet of idle workers costs Redis: heartbeats, idle waits and the operator's reaper.

    .venv/bin/python bench/idle_fleet.py [--workers 1000] [--seconds 20]

One process plays N idle ``agentpool-worker`` instances on one queue, each doing what an idle
worker does (see ``Worker._fetch_loop`` and ``_heartbeat_loop``): a blocking wait for a wake-up
signal with its claim pipelined behind it, on a connection of its own
(``AGENTPOOL_POLL_SECONDS``, default 1 s), and a heartbeat
every lease/3, plus the operator's ``reap_expired`` every 2 s. It runs the same fleet twice,
with the 30 s lease of earlier releases and with the default lease, and reports the
``redis-server`` process's CPU (``/proc``) and the commands it executed per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "worker")]

from agentpool.protocol import TaskQueue, WorkerInfo  # noqa: E402
from agentpool.redis_server import RedisServer  # noqa: E402
from agentpool_worker.settings import DEFAULT_LEASE_SECONDS  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
REAP_EVERY = 2.0
POLL_SECONDS = 1.0


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def idle_worker(url: str, queue_name: str, i: int, lease: float,
                      stop: asyncio.Event) -> None:
    beat_client = aioredis.Redis.from_url(url)
    wait_client = aioredis.Redis.from_url(url)
    queue = TaskQueue(beat_client, queue_name)
    waiter = TaskQueue(wait_client, queue_name)
    info = WorkerInfo(pod=f"pod-{i}", instance="i", concurrency=4, state="running")

    async def beats() -> None:
        await asyncio.sleep(random.random() * lease / 3)
        while not stop.is_set():
            await queue.heartbeat(info, {}, lease)
            await asyncio.sleep(lease / 3)

    async def waits() -> None:
        await asyncio.sleep(random.random() * POLL_SECONDS)
        while not stop.is_set():
            await waiter.wait_and_claim(info.worker_id, 1, lease, POLL_SECONDS)

    try:
        await asyncio.gather(beats(), waits())
    finally:
        await beat_client.aclose()
        await wait_client.aclose()


async def reaper(url: str, queue_name: str, stop: asyncio.Event) -> None:
    client = aioredis.Redis.from_url(url)
    queue = TaskQueue(client, queue_name)
    try:
        while not stop.is_set():
            await queue.reap_expired()
            await asyncio.sleep(REAP_EVERY)
    finally:
        await client.aclose()


async def fleet(server: RedisServer, workers: int, lease: float,
                seconds: float) -> dict[str, float]:
    assert server.process is not None
    admin = aioredis.Redis.from_url(server.url)
    await admin.flushdb()
    stop = asyncio.Event()
    queue_name = f"idle{int(lease)}"
    tasks = [asyncio.create_task(idle_worker(server.url, queue_name, i, lease, stop))
             for i in range(workers)]
    tasks.append(asyncio.create_task(reaper(server.url, queue_name, stop)))
    await asyncio.sleep(max(lease, 3.0))  # every worker connected and beating
    await admin.config_resetstat()
    cpu0, t0 = cpu(server.process.pid), time.monotonic()
    await asyncio.sleep(seconds)
    used, elapsed = cpu(server.process.pid) - cpu0, time.monotonic() - t0
    stats = await admin.info("commandstats")
    calls = sum(int(v["calls"]) for k, v in stats.items() if "info" not in k and "config" not in k)
    stop.set()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await admin.aclose()
    return {"cpu_percent": 100 * used / elapsed, "commands_per_s": calls / elapsed}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    with RedisServer() as server:
        for lease in (30.0, DEFAULT_LEASE_SECONDS):
            fig = await fleet(server, args.workers, lease, args.seconds)
            print(f"{args.workers} idle workers, {lease:g} s lease (heartbeat every "
                  f"{lease / 3:.2f} s), poll {POLL_SECONDS:g} s, reaper every {REAP_EVERY:g} s: "
                  f"redis-server CPU {fig['cpu_percent']:.1f} % of one core, "
                  f"{fig['commands_per_s']:,.0f} commands/s")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
