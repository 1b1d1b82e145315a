"""taskiq with taskiq-redis's stream broker (``RedisStreamBroker``: XADD, XREADGROUP, XACK).
Worker: ``taskiq worker bench.peers.drv_taskiq:broker --workers 1`` (one process; taskiq's
default is two, the bench starts W processes itself, as W pods).

Profiles: taskiq's defaults everywhere (100 async tasks per process, 100 messages per read,
2 s block); the consumer group starts at the stream's beginning (``consumer_id="0"``) so that
tasks queued before the first worker starts are read. Recovery: unacknowledged messages are
claimed again (XAUTOCLAIM) once idle for ``idle_timeout`` (10 min), by a worker that has
just read a batch of new messages.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis.asyncio as aioredis
from taskiq import TaskiqEvents, TaskiqState
from taskiq_redis import RedisStreamBroker

from bench.peers import common

broker = RedisStreamBroker(url=common.env_url(), queue_name=common.QUEUE, consumer_id="0")
_recorder: aioredis.Redis | None = None


def _client() -> aioredis.Redis:
    global _recorder
    if _recorder is None:
        _recorder = aioredis.Redis.from_url(common.env_url())
    return _recorder


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _ready(state: TaskiqState) -> None:
    await _client().incr(common.READY_KEY)


@broker.task(task_name="noop")
async def noop() -> None:
    return None


@broker.task(task_name="work")
async def work() -> None:
    if await _client().incr(common.WORK_KEY) == common.total():
        await _client().rpush(common.END_KEY, time.time())


@broker.task(task_name="stamp")
async def stamp(sent: float) -> None:
    await _client().rpush(common.LATENCY_KEY, time.time() - sent)


@broker.task(task_name="long_task")
async def long_task(seconds: float) -> None:
    await _client().rpush(common.STARTS_KEY, f'{{"pid": {os.getpid()}, "t": {time.time()}}}')
    await asyncio.sleep(seconds)


async def _produce(command: str, options: dict[str, Any]) -> dict[str, Any]:
    await broker.startup()
    n = int(options.get("n", 0))
    try:
        if options.get("mode") == "batch":
            return {"unsupported": True}
        start = time.perf_counter()
        if command in ("e2e", "fill_work"):
            first, cpu = time.time(), time.process_time()
            if options.get("mode") == "concurrent":
                await common.in_coroutines(n, work.kiq)
            else:
                for _ in range(n):
                    await work.kiq()
            return {"n": n, "seconds": time.perf_counter() - start, "first": first,
                    "cpu": time.process_time() - cpu}
        if command in ("enqueue", "fill"):
            if options.get("mode") == "concurrent":
                await common.in_coroutines(n, noop.kiq)
            else:
                for _ in range(n):
                    await noop.kiq()
            return {"n": n, "seconds": time.perf_counter() - start}
        if command == "latency":
            interval = float(options["interval"])
            for i in range(n):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await stamp.kiq(time.time())
            return {}
        if command == "long":
            await long_task.kiq(float(options["seconds"]))
            return {}
        raise SystemExit(f"unknown command {command!r}")
    finally:
        await broker.shutdown()


def main() -> None:
    command, options = common.command_line()
    common.reply(asyncio.run(_produce(command, options)))


if __name__ == "__main__":
    main()
