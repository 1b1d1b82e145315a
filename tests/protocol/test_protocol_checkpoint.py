"""Checkpoints: fenced like completions, handed to the next attempt with its claim."""

from __future__ import annotations

import redis.asyncio as aioredis
from protocol_helpers import claim_one

from agentpool.protocol import TaskQueue, encode_checkpoint


async def test_only_the_holder_saves_and_the_next_attempt_receives_it(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    task_id = await queue.submit({})
    first = await claim_one(queue, "pod-a:i1")
    assert first.checkpoint_raw is None
    assert await queue.checkpoint(first, encode_checkpoint({"step": 3}))
    await queue.requeue_owner("pod-a:i1")
    second = await claim_one(queue, "pod-b:i1")
    assert second.checkpoint_raw == '{"step":3}'

    assert not await queue.checkpoint(first, encode_checkpoint({"step": 4}))  # a zombie
    assert await queue.checkpoint_state(task_id) == {"step": 3}
    assert (await queue.figures()).stats["checkpoints_refused"] == 1

    assert await queue.checkpoint(second, encode_checkpoint({"step": 5}))
    assert await queue.complete(second, "ok")
    assert not await queue.checkpoint(second, encode_checkpoint({"step": 6}))
    # kept for the result TTL, like the task and its events, then gone with them
    assert await queue.checkpoint_state(task_id) == {"step": 5}
    ttl = await redis.ttl(queue.prefix + f"cp:{task_id}")
    assert 0 < ttl == await redis.ttl(queue.task_key(task_id))


async def test_a_dead_task_keeps_its_checkpoint_until_purged(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    task_id = await queue.submit({}, max_attempts=1)
    task = await claim_one(queue, "pod-a:i1")
    await queue.checkpoint(task, encode_checkpoint({"step": 7}))
    await queue.fail(task, "boom")
    assert await queue.requeue_dead([task_id]) == 1
    again = await claim_one(queue, "pod-a:i1")
    assert again.checkpoint_raw == '{"step":7}'
    await queue.fail(again, "boom")
    await queue.purge_dead([task_id])
    assert await queue.checkpoint_state(task_id) is None
    assert not await redis.exists(queue.prefix + f"cp:{task_id}")
