"""What a pool's QueueReachable condition says when its Redis cannot be reached through
Sentinel: which primary, which sentinels, the last error; never a client's repr."""

from __future__ import annotations

import pytest

from agentpool.protocol import TaskQueue
from agentpool.redis_server import free_port
from agentpool_operator.redis_access import QueueAccessError, RedisClients, read_figures
from agentpool_operator.status import MAX_MESSAGE_LENGTH


async def test_sentinels_nobody_listens_on_are_named_with_the_last_error(queue_name: str) -> None:
    first, second = free_port(), free_port()
    clients = RedisClients()
    try:
        client = await clients.client(
            "ns", "pool", f"redis+sentinel://agent:hunter2@127.0.0.1:{first},localhost:{second}"
                          "/mymaster/0?sentinel_password=sentinel-pw")
        with pytest.raises(QueueAccessError) as raised:
            await read_figures(TaskQueue(client, queue_name))
    finally:
        await clients.close()
    caught = raised.value
    assert (caught.reason, caught.message) == ("RedisUnreachable", (
        f"cannot reach Redis: no sentinel named a primary for 'mymaster' (asked "
        f"127.0.0.1:{first}, localhost:{second}); last error: Error 111 connecting to "
        f"localhost:{second}: Connection refused"))
    assert len(caught.message) < MAX_MESSAGE_LENGTH / 4
