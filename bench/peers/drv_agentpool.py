"""agentpool. Worker: ``agentpool-worker`` with ``AGENTPOOL_*`` settings from the orchestrator.

The worker runs one handler for all its tasks, so the orchestrator names the handler per
workload: ``agentpool_worker.builtin:noop`` for the drain, ``bench.peers.drv_agentpool:stamp``
for latency, ``bench.peers.drv_agentpool:long_task`` for recovery and
``bench.peers.drv_agentpool:work`` for the end-to-end runs.

Profiles:
- ``throughput``: concurrency 100 (one claim fetches up to 100 tasks), everything else default.
- ``default``: the defaults (7 s lease). Recovery is then measured two ways: with the
  operator's requeue-by-owner on the pod event (``TaskQueue.requeue_pod``), and with lease
  expiry alone (the operator's periodic ``reap_expired``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from agentpool.client import Client, SyncClient
from bench.peers import common

_recorder: aioredis.Redis | None = None


async def work(payload: Any) -> None:
    """One Redis write of the task's own, on a client of the handler's (as a real task's)."""
    global _recorder
    if _recorder is None:
        _recorder = aioredis.Redis.from_url(common.env_url())
    if await _recorder.incr(common.WORK_KEY) == common.total():
        await _recorder.rpush(common.END_KEY, time.time())


async def stamp(payload: Any) -> None:
    common.record_latency(float(payload["sent"]))


async def long_task(payload: Any) -> None:
    common.record_start()
    await asyncio.sleep(float(payload["seconds"]))


async def _produce(command: str, options: dict[str, Any]) -> dict[str, Any]:
    """The producer as the README shows it: ``Client.from_url`` and its queue."""
    client = Client.from_url(common.env_url())
    queue = client.queue(common.QUEUE)
    n = int(options.get("n", 0))
    try:
        start = time.perf_counter()
        if command in ("e2e", "fill_work"):
            first, cpu = time.time(), time.process_time()
            if options.get("mode") == "batch":
                await queue.submit_many([None] * n, chunk=common.BATCH_CHUNK)
            elif options.get("mode") == "concurrent":
                await common.in_coroutines(n, lambda: queue.submit(None))
            else:
                for _ in range(n):
                    await queue.submit(None)
            return {"n": n, "seconds": time.perf_counter() - start, "first": first,
                    "cpu": time.process_time() - cpu}
        if command == "enqueue" and options.get("mode") == "concurrent":
            await common.in_coroutines(n, lambda: queue.submit(None))
            return {"n": n, "seconds": time.perf_counter() - start}
        if command == "enqueue" and options.get("mode") != "batch":
            for _ in range(n):
                await queue.submit(None)
            return {"n": n, "seconds": time.perf_counter() - start}
        if command in ("enqueue", "fill"):
            await queue.submit_many([None] * n, chunk=common.BATCH_CHUNK)
            return {"n": n, "seconds": time.perf_counter() - start}
        if command == "latency":
            interval = float(options["interval"])
            for i in range(n):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await queue.submit({"sent": time.time()})
            return {}
        if command == "long":
            await queue.submit({"seconds": float(options["seconds"])})
            return {}
        raise SystemExit(f"unknown command {command!r}")
    finally:
        await client.aclose()


def _produce_sync(n: int, threads: bool) -> dict[str, Any]:
    """Single submits through the blocking client (a web handler's way), from one thread or
    from common.PRODUCERS threads at once."""
    with SyncClient.from_url(common.env_url()) as client:
        queue = client.queue(common.QUEUE)

        def one_by_one() -> None:
            for _ in range(n):
                queue.submit(None)

        return common.timed(n, common.in_threads(n, lambda: queue.submit(None))
                            if threads else one_by_one)


def main() -> None:
    command, options = common.command_line()
    if command == "enqueue" and options.get("mode") in ("sync", "sync_concurrent"):
        common.reply(_produce_sync(int(options["n"]), options["mode"] == "sync_concurrent"))
        return
    common.reply(asyncio.run(_produce(command, options)))


if __name__ == "__main__":
    main()
