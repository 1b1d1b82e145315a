"""What a pool's QueueReachable condition says when its Redis wants a password."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer
from agentpool_operator.redis_access import QueueAccessError, read_figures


@pytest.mark.parametrize(("userinfo", "message"), [
    ("", "Redis requires a password: put it in the pool's Redis URL: spec.redis.url, or the "
         "Secret named by spec.redis.urlSecretRef"),
    (":not-it@", "Redis refused the password"),
], ids=["no-password", "wrong-password"])
async def test_a_refused_password_is_one_plain_line(
    protected_redis: RedisServer, queue_name: str, userinfo: str, message: str,
) -> None:
    client = aioredis.Redis.from_url(f"redis://{userinfo}127.0.0.1:{protected_redis.port}/0")
    try:
        with pytest.raises(QueueAccessError) as caught:
            await read_figures(TaskQueue(client, queue_name))
    finally:
        await client.aclose()
    assert (caught.value.reason, caught.value.message) == ("RedisAuthFailed", message)
