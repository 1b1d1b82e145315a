from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from console_helpers import TOKEN

from agentpool.console.app import ConsoleConfig, build_app
from agentpool.console.sources import Sources


@pytest.fixture
async def api(redis: aioredis.Redis, queue_name: str) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    """The console app in this process, on the session's Redis, showing `queue_name`, with
    write actions enabled by TOKEN."""
    sources = Sources(redis, queues=[queue_name])
    app = build_app(sources, ConsoleConfig(token=TOKEN, fleet_seconds=0.2))
    async with TestClient(TestServer(app)) as client:
        yield client
