"""A run of a pool that declares no rate limits asking for one (``ctx.limit``, ``ctx.hold``
and their sync forms) is refused as one naming a limit its pool does not declare: at once,
permanently (UndeclaredLimit), not retried until its attempts are spent."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from worker_helpers import running, settings

from agentpool.protocol import TaskQueue


@pytest.mark.parametrize("handler", ["limited", "limited_sync", "held", "held_sync"])
async def test_a_limit_asked_of_a_pool_without_rate_limits_dead_letters_the_task_at_once(
    redis: aioredis.Redis, redis_url: str, queue_name: str, handler: str,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, f"limit_handlers:{handler}")):
        task_id = await queue.submit({"limit": "llm", "redis": redis_url, "counter": "c"},
                                     max_attempts=3)
        info = await queue.wait(task_id, timeout=10)
    assert (info.state, info.attempts) == ("dead", 1)
    assert (info.error or "").startswith(
        "UndeclaredLimit: rate limit 'llm' is not declared for this pool: add it to the "
        "pool's spec.rateLimits (declared: none)")
