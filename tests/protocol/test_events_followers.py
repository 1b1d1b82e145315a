"""Many followers of task events on one client leave its pool room for every other call: a
follower's XREAD blocks on a pooled connection and asks again at once, and redis-py's pool
lets it take that connection straight back, so with every connection held that way another
call waited for ever (101 followers on the default pool; 20 with ``max_connections=20``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from protocol_helpers import eventually

from agentpool.connection import redis_from_url
from agentpool.protocol import TaskQueue
from agentpool.protocol.waiting import subscriptions_allowed

POOL = 8
FOLLOWERS = 3 * POOL
WITHIN = 5.0
"""Seconds another call may take with every follower reading (it takes milliseconds)."""


@pytest.fixture(params=("standalone", "sentinel"))
def redis_mode(request: pytest.FixtureRequest) -> str:
    """A Cluster client's per-node pools have no cap: nothing to run out of."""
    mode: str = request.param
    return mode


@pytest.fixture
async def small(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_from_url(redis_url, max_connections=POOL)
    yield client
    await client.aclose()


async def held_in_xread(admin: aioredis.Redis) -> int:
    """Connections Redis has blocked in an XREAD."""
    return sum("b" in c["flags"] and c["cmd"] == "xread" for c in await admin.client_list())


async def subscribed(admin: aioredis.Redis) -> int:
    return sum(int(c.get("ssub", 0)) > 0 for c in await admin.client_list())


async def follow(queue: TaskQueue, task_id: str, seen: list[str]) -> None:
    async for event in queue.events(task_id):
        seen.append(event.kind)


async def test_other_calls_go_on_while_three_times_the_pool_follows_and_followers_see_all(
    small: aioredis.Redis, redis: aioredis.Redis, queue_name: str,
) -> None:
    idle, other = TaskQueue(small, queue_name), TaskQueue(small, f"{queue_name}-other")
    ids = await idle.submit_many([{"i": i} for i in range(FOLLOWERS)])
    seen: dict[str, list[str]] = {task_id: [] for task_id in ids}
    followers = [asyncio.create_task(follow(idle, t, seen[t])) for t in ids]
    try:
        async def reading() -> bool:
            return await held_in_xread(redis) >= subscriptions_allowed(POOL)

        await eventually(reading)
        for _ in range(3):
            task_id = await asyncio.wait_for(other.submit({}), WITHIN)
            assert (await asyncio.wait_for(other.get(task_id), WITHIN)) is not None
        assert await held_in_xread(redis) <= subscriptions_allowed(POOL) == POOL // 2

        worker = TaskQueue(redis, queue_name)
        claimed = (await worker.claim("pod-w:i1", FOLLOWERS, 30)).tasks
        assert len(claimed) == FOLLOWERS
        for task in claimed:
            await worker.emit(task.id, "hello", attempt=task.attempts)

        async def all_seen() -> bool:
            return all(kinds == ["hello"] for kinds in seen.values())

        await eventually(all_seen, within=WITHIN)
        await worker.complete_many([(task, None) for task in claimed])
        await asyncio.wait_for(asyncio.gather(*followers), WITHIN)
    finally:
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    assert all(kinds == ["hello", "final"] for kinds in seen.values())


async def test_waits_and_followers_hold_at_most_half_the_pool_together(
    small: aioredis.Redis, redis: aioredis.Redis, queue_name: str,
) -> None:
    """Waits' subscriptions hold connections too: half the pool for each would be all of it."""
    idle, other = TaskQueue(small, queue_name), TaskQueue(small, f"{queue_name}-other")
    waited = await idle.submit_many(range(POOL))
    followed = await idle.submit_many(range(FOLLOWERS))
    waits = [asyncio.create_task(idle.wait(t, timeout=60)) for t in waited]
    seen: list[str] = []
    followers = [asyncio.create_task(follow(idle, t, seen)) for t in followed]
    try:
        async def holding() -> bool:
            held = await subscribed(redis) + await held_in_xread(redis)
            return held >= subscriptions_allowed(POOL)

        await eventually(holding)
        for _ in range(3):
            task_id = await asyncio.wait_for(other.submit({}), WITHIN)
            assert (await asyncio.wait_for(other.get(task_id), WITHIN)) is not None
        assert await subscribed(redis) + await held_in_xread(redis) <= POOL // 2
        assert await asyncio.wait_for(idle.cancel_waiting(), WITHIN) == POOL + FOLLOWERS
        await asyncio.wait_for(asyncio.gather(*waits, *followers), WITHIN)
    finally:
        for running in (*waits, *followers):
            running.cancel()
        await asyncio.gather(*waits, *followers, return_exceptions=True)


async def test_a_wait_cut_off_waiting_for_a_connection_blames_the_pool_not_redis(
    small: aioredis.Redis, queue_name: str,
) -> None:
    queue = TaskQueue(small, queue_name)
    task_id = await queue.submit({})
    holders = [asyncio.create_task(small.blpop([f"{queue_name}:{uuid.uuid4().hex}"], 30))
               for _ in range(POOL)]
    try:
        async def all_taken() -> bool:
            pool = small.connection_pool
            return len(pool._in_use_connections) == POOL  # type: ignore[attr-defined]

        await eventually(all_taken)
        with pytest.raises(TimeoutError) as cut:
            await queue.wait(task_id, timeout=1)
    finally:
        for holder in holders:
            holder.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    assert str(cut.value) == (
        f"1 of 1 tasks of queue {queue_name!r} not final after 1s; the client's {POOL} "
        "connections (max_connections) were all in use for the last 1s")
    assert (await asyncio.wait_for(queue.get(task_id), WITHIN)) is not None
