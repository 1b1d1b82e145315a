"""A 429 empties the limit's buckets for the end of its pause; a reservation handed out before
it stays spent, given back or not: giving it back would move the bucket back and grant its
time again on top of the pause. Assertions are on grant times computed by Redis (µs)."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from agentpool.ratelimit import LimitConfig, RateLimiter, key_prefix

US = 1_000_000


@pytest.fixture
def limiter(redis: aioredis.Redis) -> RateLimiter:
    """1 request/s, a bucket of one request."""
    name = f"l-{uuid.uuid4().hex[:10]}"
    config = LimitConfig(name, requests_per_minute=60, burst_seconds=1)
    return RateLimiter(redis, name, config=config, caller="t")


async def pause_until_us(redis: aioredis.Redis, limiter: RateLimiter) -> float:
    return float(await redis.hget(key_prefix(limiter.name) + "state", "pause_until"))


async def test_a_reservation_taken_before_a_429_is_not_given_back(
    redis: aioredis.Redis, limiter: RateLimiter
) -> None:
    await limiter.reserve()
    later = await limiter.reserve()  # the last handed out: a second away
    throttle = await limiter.throttled(retry_after=2.0)
    assert throttle.factor == 0.5
    assert await limiter.release(later) is False
    after = await limiter.reserve()
    # the pause, then an empty bucket refilled at half rate: one request every 2 s
    assert after.grant_us == pytest.approx(await pause_until_us(redis, limiter) + 2 * US, abs=2)
    assert (await limiter.state()).released == 0


async def test_a_reservation_taken_after_a_429_is_given_back(
    redis: aioredis.Redis, limiter: RateLimiter
) -> None:
    await limiter.reserve()
    await limiter.throttled(retry_after=2.0)
    first = await limiter.reserve()
    end = await pause_until_us(redis, limiter)
    assert first.grant_us == pytest.approx(end + 2 * US, abs=2)
    given_back = await limiter.reserve()
    assert given_back.grant_us == pytest.approx(end + 4 * US, abs=2)
    assert await limiter.release(given_back) is True
    assert (await limiter.reserve()).grant_us == pytest.approx(end + 4 * US, abs=2)
