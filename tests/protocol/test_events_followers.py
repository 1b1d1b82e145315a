"""Many followers of task events on one client leave its pool room for every other call: a
follower's XREAD blocks on a pooled connection and asks again at once, and redis-py's pool
lets it take that connection straight back, so with every connection held that way another
call waited for ever (101 followers on the default pool; 20 with ``max_connections=20``).
Waits keep a share of their own: sharing one with followers, 32 SSE followers made every new
wait poll (0.7 s from a task's end to its wait's return instead of 1 ms), and a wait that began
polling polled to its end, slots free or not."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from protocol_helpers import claim_one, eventually

from agentpool.connection import redis_from_url
from agentpool.protocol import TaskQueue
from agentpool.protocol.waiting import follows_allowed, subscriptions_allowed, waits_subscribed

POOL = 8
FOLLOWERS = 3 * POOL
WITHIN = 5.0
"""Seconds another call may take with every follower reading (it takes milliseconds)."""
WOKEN_WITHIN = 0.3
"""Seconds from a task's end to the return of its subscribed wait (milliseconds; a wait that
polls reads once a second)."""


@pytest.fixture(params=("standalone", "sentinel"))
def redis_mode(request: pytest.FixtureRequest) -> str:
    """A Cluster client's per-node pools have no cap: nothing to run out of."""
    mode: str = request.param
    return mode


@pytest.fixture
def small_name(queue_name: str) -> str:
    """The name the small client's connections go by on the server, which other tests' clients
    share: only these connections count."""
    return f"small-{queue_name}"


@pytest.fixture
async def small(redis_url: str, small_name: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_from_url(redis_url, max_connections=POOL, client_name=small_name)
    yield client
    await client.aclose()


async def held_in_xread(admin: aioredis.Redis, name: str) -> int:
    """Connections of the client named `name` that Redis has blocked in an XREAD."""
    return sum(c.get("name") == name and "b" in c["flags"] and c["cmd"] == "xread"
               for c in await admin.client_list())


async def subscribed(admin: aioredis.Redis, name: str) -> int:
    """Connections of the client named `name` holding a (sharded) subscription."""
    return sum(c.get("name") == name and int(c.get("ssub", 0)) > 0
               for c in await admin.client_list())


async def follow(queue: TaskQueue, task_id: str, seen: list[str]) -> None:
    async for event in queue.events(task_id):
        seen.append(event.kind)


async def test_other_calls_go_on_while_three_times_the_pool_follows_and_followers_see_all(
    small: aioredis.Redis, small_name: str, redis: aioredis.Redis, queue_name: str,
) -> None:
    idle, other = TaskQueue(small, queue_name), TaskQueue(small, f"{queue_name}-other")
    ids = await idle.submit_many([{"i": i} for i in range(FOLLOWERS)])
    seen: dict[str, list[str]] = {task_id: [] for task_id in ids}
    followers = [asyncio.create_task(follow(idle, t, seen[t])) for t in ids]
    try:
        async def reading() -> bool:
            return await held_in_xread(redis, small_name) >= follows_allowed(POOL)

        await eventually(reading)
        for _ in range(3):
            task_id = await asyncio.wait_for(other.submit({}), WITHIN)
            assert (await asyncio.wait_for(other.get(task_id), WITHIN)) is not None
        assert await held_in_xread(redis, small_name) <= follows_allowed(POOL) == POOL // 4

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


async def test_waits_keep_their_half_while_followers_hold_their_quarter_and_others_go_on(
    small: aioredis.Redis, small_name: str, redis: aioredis.Redis, queue_name: str,
) -> None:
    """Followers first, taking every blocking read they may; the waits after them still
    subscribe, all their half of the pool, and a quarter is left to other calls."""
    idle, other = TaskQueue(small, queue_name), TaskQueue(small, f"{queue_name}-other")
    waited = await idle.submit_many(range(POOL))
    followed = await idle.submit_many(range(FOLLOWERS))
    seen: list[str] = []
    followers = [asyncio.create_task(follow(idle, t, seen)) for t in followed]
    waits: list[asyncio.Task[object]] = []
    try:
        async def reading() -> bool:
            return await held_in_xread(redis, small_name) >= follows_allowed(POOL)

        await eventually(reading)
        waits = [asyncio.create_task(idle.wait(t, timeout=60)) for t in waited]

        async def holding() -> bool:
            return (await subscribed(redis, small_name) >= subscriptions_allowed(POOL)
                    and await held_in_xread(redis, small_name) >= follows_allowed(POOL))

        await eventually(holding)
        for _ in range(3):
            task_id = await asyncio.wait_for(other.submit({}), WITHIN)
            assert (await asyncio.wait_for(other.get(task_id), WITHIN)) is not None
        assert await subscribed(redis, small_name) <= subscriptions_allowed(POOL) == POOL // 2
        assert await held_in_xread(redis, small_name) <= follows_allowed(POOL) == POOL // 4
        assert await asyncio.wait_for(idle.cancel_waiting(), WITHIN) == POOL + FOLLOWERS
        await asyncio.wait_for(asyncio.gather(*waits, *followers), WITHIN)
    finally:
        for running in (*waits, *followers):
            running.cancel()
        await asyncio.gather(*waits, *followers, return_exceptions=True)


async def test_a_wait_subscribes_and_wakes_at_once_while_followers_fill_their_share(
    small: aioredis.Redis, small_name: str, redis: aioredis.Redis, queue_name: str,
) -> None:
    idle, worker = TaskQueue(small, queue_name), TaskQueue(redis, queue_name)
    followed = await idle.submit_many(range(FOLLOWERS))
    followers = [asyncio.create_task(follow(idle, t, [])) for t in followed]
    try:
        async def reading() -> bool:
            return await held_in_xread(redis, small_name) >= follows_allowed(POOL)

        await eventually(reading)
        claimed = (await worker.claim("pod-w:i1", FOLLOWERS, 30)).tasks
        assert len(claimed) == FOLLOWERS
        for _ in range(3):
            task_id = await worker.submit({})
            task = await claim_one(worker, "pod-w:i1")
            waiting = asyncio.create_task(idle.wait(task_id, timeout=60))

            async def one_subscribed() -> bool:
                return waits_subscribed.get(small, 0) == 1

            await eventually(one_subscribed)
            ended = time.monotonic()
            await worker.complete(task, "ok")
            assert (await asyncio.wait_for(waiting, WITHIN)).state == "succeeded"
            assert time.monotonic() - ended < WOKEN_WITHIN
        await eventually(reading)
        await worker.complete_many([(task, None) for task in claimed])
        await asyncio.wait_for(asyncio.gather(*followers), WITHIN)
    finally:
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)


async def test_a_wait_that_polls_subscribes_at_its_next_read_once_a_subscription_frees(
    small: aioredis.Redis, redis: aioredis.Redis, queue_name: str,
) -> None:
    """A wait beyond the waits' share reads its task once a second; one of theirs ending, it
    takes the subscription freed (at its next read) and wakes at once from then on."""
    idle, worker = TaskQueue(small, queue_name), TaskQueue(redis, queue_name)
    share = subscriptions_allowed(POOL)
    first = await worker.submit({})
    holding_ids = await worker.submit_many(range(share))
    late_id = await worker.submit({})
    tasks = {t.id: t for t in (await worker.claim("pod-w:i1", share + 2, 30)).tasks}
    await worker.complete(tasks[first], "first")
    holding = [asyncio.create_task(idle.wait(t, timeout=60)) for t in holding_ids]
    late = idle.as_finished([first, late_id], timeout=60)
    late_next: asyncio.Task[object] | None = None
    try:
        async def all_subscribed() -> bool:
            return waits_subscribed.get(small, 0) == share

        await eventually(all_subscribed)
        assert (await anext(late)).id == first  # its first read made: it polls
        late_next = asyncio.create_task(anext(late))
        await worker.complete(tasks[holding_ids[0]], "freed")
        assert (await asyncio.wait_for(holding[0], WITHIN)).result == "freed"
        await eventually(all_subscribed)
        ended = time.monotonic()
        await worker.complete(tasks[late_id], "late")
        assert (await asyncio.wait_for(late_next, WITHIN)).result == "late"
        assert time.monotonic() - ended < WOKEN_WITHIN
        await worker.complete_many([(tasks[t], None) for t in holding_ids[1:]])
        await asyncio.wait_for(asyncio.gather(*holding), WITHIN)
        with pytest.raises(StopAsyncIteration):
            await anext(late)
        assert waits_subscribed.get(small, 0) == 0
    finally:
        for running in (*holding, *([late_next] if late_next else [])):
            running.cancel()
        await asyncio.gather(*holding, *([late_next] if late_next else []),
                             return_exceptions=True)
        await late.aclose()


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
        started = time.monotonic()
        with pytest.raises(TimeoutError) as cut:
            await queue.wait(task_id, timeout=1)
        took = time.monotonic() - started
    finally:
        for holder in holders:
            holder.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    said = re.fullmatch(
        rf"1 of 1 tasks of queue {re.escape(repr(queue_name))} not final after 1s; the "
        rf"client's {POOL} connections \(max_connections\) were all in use for the last "
        r"([0-9.]+)s", str(cut.value))
    assert said, str(cut.value)
    # how long the wait's call waited for a connection, to 0.1 s: the whole second, or a
    # little more when a loaded machine ran the wait's timer late (1.2 s seen)
    assert 0.9 <= float(said[1]) <= took + 0.05, (said[1], took)
    assert (await asyncio.wait_for(queue.get(task_id), WITHIN)) is not None
