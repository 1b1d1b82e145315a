from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from protocol_helpers import RoundTrips

from agentpool.protocol import TaskQueue


@pytest.fixture(params=("standalone", "sentinel", "cluster"))
def redis_mode(request: pytest.FixtureRequest) -> str:
    """Every protocol test that uses Redis runs against a standalone server, a Sentinel-managed
    primary and a 3-primary cluster."""
    mode: str = request.param
    return mode


@pytest.fixture
def queue(redis: aioredis.Redis, queue_name: str) -> TaskQueue:
    return TaskQueue(redis, queue_name)


@pytest.fixture
def round_trips(redis: aioredis.Redis) -> RoundTrips:
    """Counts the commands the `redis` client sends (each one is a round trip)."""
    return RoundTrips(redis)
