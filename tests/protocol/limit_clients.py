"""A process of limit users for the multi-process tests: ``python limit_clients.py URL LIMIT
TOTAL CONCURRENCY START_KEY OUT``. Its coroutines wait for the start signal (a list pushed
once per process), then take grants (``acquire``: reserve and sleep) until TOTAL grants were
taken by all processes together; each grant's Redis-computed time goes to OUT."""

from __future__ import annotations

import asyncio
import os
import sys

from agentpool.connection import redis_from_url
from agentpool.ratelimit import RateLimiter


async def main(url: str, name: str, total: int, concurrency: int, start: str) -> list[int]:
    redis = redis_from_url(url)
    limiter = RateLimiter(redis, name, caller=f"proc-{os.getpid()}")
    grants: list[int] = []
    await redis.rpush(start + ":ready", os.getpid())
    await redis.blpop([start], timeout=60)

    async def user() -> None:
        while await redis.incr(start + ":taken") <= total:
            reservation = await limiter.acquire()
            grants.append(reservation.grant_us)

    await asyncio.gather(*(user() for _ in range(concurrency)))
    await redis.aclose()
    return grants


if __name__ == "__main__":
    url, name, total, concurrency, start, out = sys.argv[1:7]
    taken = asyncio.run(main(url, name, int(total), int(concurrency), start))
    with open(out, "w") as file:
        file.write("\n".join(str(g) for g in taken))
