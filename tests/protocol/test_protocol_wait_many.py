"""Waiting for many tasks at once (`wait_many`, `as_finished`): one subscription, each task
handed over once as it finishes, on a real Redis (standalone, Sentinel and Cluster through the
`queue` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Sequence

import pytest
import redis.asyncio as aioredis
from protocol_helpers import claim_one, eventually, fail_until_dead, shard_subscribers

from agentpool import protocol
from agentpool.client import SyncClient
from agentpool.protocol import TaskInfo, TaskNotFound, TaskQueue


async def test_wait_many_gives_the_infos_in_the_order_of_the_ids(queue: TaskQueue) -> None:
    ids = await queue.submit_many([{"n": n} for n in range(3)])
    waiting = asyncio.ensure_future(queue.wait_many([ids[2], ids[0], ids[1], ids[2]], timeout=20))
    for _ in ids:
        task = await claim_one(queue, "w1")
        assert await queue.complete(task, json.loads(task.payload_raw)["n"])
    infos = await waiting
    assert [(i.id, i.state, i.result) for i in infos] == [
        (ids[2], "succeeded", 2), (ids[0], "succeeded", 0), (ids[1], "succeeded", 1)]


async def test_as_finished_hands_over_the_final_ones_first_then_each_as_it_ends(
    queue: TaskQueue,
) -> None:
    early, late, later = await queue.submit_many(["early", "late", "later"])
    task = await claim_one(queue, "w1")
    assert task.id == early and await queue.complete(task, None)
    finishes = queue.as_finished([later, late, early], timeout=20)
    first = await anext(finishes)
    assert first.id == early

    async def next_finish() -> TaskInfo:
        return await anext(finishes)

    handed = asyncio.ensure_future(next_finish())
    await asyncio.sleep(0.2)
    assert not handed.done(), "nothing else has finished"
    await queue.fail(await claim_one(queue, "w1"), "boom", retryable=False)
    second = await asyncio.wait_for(handed, 10)
    assert (second.id, second.state, second.error) == (late, "dead", "boom")
    assert await queue.cancel(later) is protocol.CancelOutcome.CANCELLED
    third = await asyncio.wait_for(next_finish(), 10)
    assert (third.id, third.state) == (later, "cancelled")
    with pytest.raises(StopAsyncIteration):
        await next_finish()


async def test_many_waiting_tasks_share_one_subscription(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A fan-out of 300 tasks: the wait holds one subscription (a connection), however many
    ids it waits for, each task comes back once, and its record is read whole once."""
    ids = await queue.submit_many(range(300))
    read_whole: list[str] = []
    get_many = queue.get_many

    async def counted(task_ids: Sequence[str]) -> list[TaskInfo]:
        read_whole.extend(task_ids)
        return await get_many(task_ids)

    queue.get_many = counted  # type: ignore[method-assign]
    waiting = asyncio.ensure_future(queue.wait_many(ids, timeout=60))
    try:
        channel = queue.prefix + "done"
        await eventually(lambda: _subscribers(redis, channel, 1))
        assert protocol._SUBSCRIBED_WAITS.get(queue.redis) == 1
        for _ in range(3):
            batch = await queue.claim("pod-w:i1", 100, 30)
            completions = [(t, json.loads(t.payload_raw)) for t in batch.tasks]
            assert await queue.complete_many(completions) == [True] * 100
        infos = await asyncio.wait_for(waiting, 30)
    finally:
        waiting.cancel()
    assert [i.result for i in infos] == list(range(300))
    assert sorted(read_whole) == sorted(ids)
    assert protocol._SUBSCRIBED_WAITS.get(queue.redis, 0) == 0
    await eventually(lambda: _subscribers(redis, queue.prefix + "done", 0))


async def _subscribers(redis: aioredis.Redis, channel: str, count: int) -> bool:
    return await shard_subscribers(redis, channel) == count


async def test_a_chain_cut_by_a_death_ends_the_wait_for_all_of_it(queue: TaskQueue) -> None:
    first = await queue.submit({"n": 1}, max_attempts=1)
    rest = await queue.submit_many([{"n": n} for n in range(2, 5)], after=[first])
    waiting = asyncio.ensure_future(queue.wait_many([first, *rest], timeout=20))
    await asyncio.sleep(0.2)
    await fail_until_dead(queue, "w1", first)
    infos = await asyncio.wait_for(waiting, 10)
    assert [i.state for i in infos] == ["dead", "cancelled", "cancelled", "cancelled"]


async def test_an_unknown_id_raises_before_any_task_is_handed_over(queue: TaskQueue) -> None:
    done = await queue.submit("x")
    assert await queue.complete(await claim_one(queue, "w1"), None)
    finishes = queue.as_finished([done, "f" * 32], timeout=5)
    with pytest.raises(TaskNotFound, match=f"no task {'f' * 32} in queue {queue.name}"):
        await anext(finishes)


async def test_a_timeout_keeps_what_finished_and_raises_for_the_rest(queue: TaskQueue) -> None:
    done, stuck = await queue.submit_many(["done", "stuck"])
    assert await queue.complete(await claim_one(queue, "w1"), "ok")
    seen: list[str] = []
    with pytest.raises(TimeoutError):
        async with contextlib.aclosing(queue.as_finished([done, stuck], timeout=0.5)) as it:
            async for info in it:
                seen.append(info.id)
    assert seen == [done]
    with pytest.raises(TimeoutError):
        await queue.wait_many([done, stuck], timeout=0.3)
    assert protocol._SUBSCRIBED_WAITS.get(queue.redis, 0) == 0


async def test_no_ids_wait_for_nothing(queue: TaskQueue) -> None:
    assert await queue.wait_many([], timeout=0.1) == []


def test_the_sync_client_waits_for_many(redis_url: str, queue_name: str) -> None:
    with SyncClient.from_url(redis_url) as client:
        queue = client.queue(queue_name)
        ids = queue.submit_many(["a", "b"])
        worker = client.queue(queue_name).queue
        for _ in ids:
            task = client._call(claim_one(worker, "w1"))
            assert client._call(worker.complete(task, json.loads(task.payload_raw)))
        assert [i.result for i in queue.wait_many(iter(ids), timeout=10)] == ["a", "b"]


async def test_quiet_seconds_read_no_task_while_finishes_are_published(
    queue: TaskQueue,
) -> None:
    """Subscribed and heard, a quiet wait reads the pending tasks once per listening period
    (LISTEN_SECONDS / 3), not each second: a fan-out of long runs costs Redis nearly nothing
    while it waits."""
    ids = await queue.submit_many(range(50))
    states_read: list[str] = []
    read_states = queue._finished_among

    async def counted(task_ids: Iterable[str], pending: dict[str, str | None]) -> list[TaskInfo]:
        task_ids = list(task_ids)
        states_read.extend(task_ids)
        return await read_states(task_ids, pending)

    queue._finished_among = counted  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await queue.wait_many(ids, timeout=2.5)
    assert len(states_read) == 50, "each read once, at the start"
