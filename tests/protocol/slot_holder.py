"""A process that takes a slot and keeps it until it is killed: ``python slot_holder.py URL
LIMIT READY_KEY``. Its holds last a second (renewed every 0.3 s) so that a test of its death
waits a second, not fifteen; the limit is the operator's, declared before (no quiet time)."""

from __future__ import annotations

import asyncio
import os
import sys

from agentpool import slots
from agentpool.connection import redis_from_url
from agentpool.ratelimit import LimitConfig, RateLimiter

slots.HOLD_SECONDS, slots.RENEW_SECONDS, slots.QUIET_SECONDS = 1.0, 0.3, 0.0


async def main(url: str, name: str, ready: str) -> None:
    redis = redis_from_url(url)
    config = LimitConfig(name, max_concurrent=1)
    limiter = RateLimiter(redis, name, config=config, caller=f"proc-{os.getpid()}")
    async with limiter.hold():
        await redis.rpush(ready, os.getpid())
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
