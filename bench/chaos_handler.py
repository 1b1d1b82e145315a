"""Task handler of the chaos soak (bench/chaos.py): the simulated agent, with every run on record.

Each run adds ``task|worker|attempt`` to a Redis set when it starts (``RUNS_KEY``) and when its
simulated work is over (``FINISHED_KEY``), on the same server as the queue. A set makes the
record idempotent: a write retried across a Redis restart is still one run. The result names
its writer (worker instance and attempt), which the soak compares with the task's last
claimant to catch a zombie's completion.

A task whose payload says ``"freeze": true`` stops its own worker process (SIGSTOP) on its
first attempt, right after its work is done and before the worker can report it: the worst
moment to become a zombie. The soak notices the stopped process and resumes it (SIGCONT) once
its leases have expired and its tasks have been claimed again, so the completion the worker
then sends is exactly the one the fencing token must refuse.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentpool_worker.builtin import simulated_agent
from agentpool_worker.handlers import TaskContext

RUNS_KEY = "chaos:runs"
FINISHED_KEY = "chaos:finished"
RECORD_PATIENCE = 60.0
"""Seconds a record keeps retrying while Redis is away (a restart takes about one)."""

_client: aioredis.Redis | None = None


def run_key(task_id: str, worker: str, attempt: int) -> str:
    return f"{task_id}|{worker}|{attempt}"


async def _record(key: str, member: str) -> None:
    global _client
    if _client is None:
        # the soak's own record, outside the queue: with ACL users it needs its own URL
        url = os.environ.get("CHAOS_RECORD_URL") or os.environ["AGENTPOOL_REDIS_URL"]
        _client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECORD_PATIENCE
    delay = 0.05
    while True:
        try:
            await _client.sadd(key, member)
            return
        except (RedisError, OSError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def run(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    member = run_key(ctx.task_id, ctx.worker_id, ctx.attempt)
    await _record(RUNS_KEY, member)
    result = await simulated_agent(payload, ctx)
    await _record(FINISHED_KEY, member)
    if isinstance(payload, dict) and payload.get("freeze") and ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    return {**result, "worker": ctx.worker_id}
