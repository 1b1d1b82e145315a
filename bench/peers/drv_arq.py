"""arq. Worker: ``python -m bench.peers.drv_arq worker '{}'``, which is ``arq.run_worker`` on
the ``WorkerSettings`` below with logging at WARNING (arq's CLI logs every job at INFO).

Profiles:
- ``throughput``: ``max_jobs=100`` (default 10) and ``poll_delay=0.05`` s (default 0.5 s):
  arq polls its queue on a timer, so the poll delay bounds both throughput and latency.
- ``default``: arq's defaults (``job_timeout`` 300 s). A job whose worker died is re-run
  once its in-progress key expires: ``job_timeout`` + 10 s after it started.
- ``reliable``: ``job_timeout=30`` s (it must exceed the longest job, here 20 s), which brings
  that expiry down to 40 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

import redis.asyncio as aioredis
from arq import create_pool, run_worker
from arq.connections import RedisSettings

from bench.peers import common

PROFILE = common.env_profile()
_recorder: aioredis.Redis | None = None


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def work(ctx: dict[str, Any]) -> None:
    """One Redis write of the task's own, on a client of the task's (as a real task's)."""
    global _recorder
    if _recorder is None:
        _recorder = aioredis.Redis.from_url(common.env_url())
    if await _recorder.incr(common.WORK_KEY) == common.total():
        await _recorder.rpush(common.END_KEY, time.time())


async def stamp(ctx: dict[str, Any], sent: float) -> None:
    common.record_latency(sent)


async def long_task(ctx: dict[str, Any], seconds: float) -> None:
    common.record_start()
    await asyncio.sleep(seconds)


async def _startup(ctx: dict[str, Any]) -> None:
    common.record_ready()


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, work, stamp, long_task]
    redis_settings = RedisSettings.from_dsn(common.env_url())
    queue_name = common.QUEUE
    on_startup = _startup
    if PROFILE == "throughput":
        max_jobs = 100
        poll_delay = 0.05
    elif PROFILE == "reliable":
        job_timeout = 30


async def _produce(command: str, options: dict[str, Any]) -> dict[str, Any]:
    pool = await create_pool(WorkerSettings.redis_settings, default_queue_name=common.QUEUE)
    n = int(options.get("n", 0))
    loop = asyncio.get_running_loop()
    try:
        if options.get("mode") == "batch":
            return {"unsupported": True}
        if command in ("e2e", "fill_work"):
            first, cpu, start = time.time(), time.process_time(), loop.time()
            if options.get("mode") == "concurrent":
                await common.in_coroutines(n, lambda: pool.enqueue_job("work"))
            else:
                for _ in range(n):
                    await pool.enqueue_job("work")
            return {"n": n, "seconds": loop.time() - start, "first": first,
                    "cpu": time.process_time() - cpu}
        if command in ("enqueue", "fill"):
            start = loop.time()
            if options.get("mode") == "concurrent":
                await common.in_coroutines(n, lambda: pool.enqueue_job("noop"))
            else:
                for _ in range(n):
                    await pool.enqueue_job("noop")
            return {"n": n, "seconds": loop.time() - start}
        if command == "latency":
            interval = float(options["interval"])
            t0 = loop.time()
            for i in range(n):
                delay = t0 + i * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await pool.enqueue_job("stamp", time.time())
            return {}
        if command == "long":
            await pool.enqueue_job("long_task", float(options["seconds"]))
            return {}
        raise SystemExit(f"unknown command {command!r}")
    finally:
        await pool.aclose()


def main() -> None:
    command, options = common.command_line()
    if command == "worker":
        logging.basicConfig(level=logging.WARNING)
        run_worker(WorkerSettings)  # type: ignore[arg-type]
        return
    common.reply(asyncio.run(_produce(command, options)))


if __name__ == "__main__":
    main()
