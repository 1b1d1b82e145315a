"""A worker and tenants' caps on runs at once: a tenant at its cap runs no more tasks at once
however many slots are free, the other tenants' tasks take the slots meanwhile, and the end of
one of its runs starts its next task without waiting for a poll."""

from __future__ import annotations

import redis.asyncio as aioredis
import sample_handlers
from worker_helpers import HANDLERS, eventually, running, settings, task_in

from agentpool.protocol import TaskQueue


async def test_a_capped_tenant_runs_one_at_a_time_while_the_others_fill_the_slots(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    await queue.set_tenant_caps({"capped": 1})
    sample_handlers.TENANT_GAUGES.clear()
    ids = [await queue.submit({"of": "capped", "seconds": 0.1}, tenant="capped")
           for _ in range(6)]
    ids += [await queue.submit({"of": "free", "seconds": 0.3}, tenant="free")
            for _ in range(3)]
    # a poll far longer than the test: each next task of the capped tenant starts on the
    # wake-up its previous run's end sends
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:tenant_counted",
                                concurrency=4, poll_seconds=60)):
        for task_id in ids:
            await eventually(lambda t=task_id: task_in(queue, t, "succeeded"), 10, "all done")
    gauges = sample_handlers.TENANT_GAUGES
    assert gauges["capped"].peak == 1
    assert gauges["free"].peak == 3
    assert await redis.scard(queue.prefix + "runs:capped") == 0
