from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from protocol_helpers import RoundTrips

from agentpool.protocol import TaskQueue


@pytest.fixture
def queue(redis: aioredis.Redis, queue_name: str) -> TaskQueue:
    return TaskQueue(redis, queue_name)


@pytest.fixture
def round_trips(redis: aioredis.Redis) -> RoundTrips:
    """Counts the commands the `redis` client sends (each one is a round trip)."""
    return RoundTrips(redis)
