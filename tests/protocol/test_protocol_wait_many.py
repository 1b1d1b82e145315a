"""Waiting for many tasks at once (`wait_many`, `as_finished`): one subscription, each task
handed over once as it finishes, on a real Redis (standalone, Sentinel and Cluster through the
`queue` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis
from protocol_helpers import claim_one, eventually, fail_until_dead, shard_subscribers

from agentpool import protocol
from agentpool.client import SyncClient
from agentpool.connection import redis_from_url
from agentpool.protocol import TaskInfo, TaskNotFound, TaskQueue
from agentpool.protocol.waiting import waits_subscribed
from agentpool.redis_server import RedisServer


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
        assert waits_subscribed.get(queue.redis) == 1
        for _ in range(3):
            batch = await queue.claim("pod-w:i1", 100, 30)
            completions = [(t, json.loads(t.payload_raw)) for t in batch.tasks]
            assert await queue.complete_many(completions) == [True] * 100
        infos = await asyncio.wait_for(waiting, 30)
    finally:
        waiting.cancel()
    assert [i.result for i in infos] == list(range(300))
    assert sorted(read_whole) == sorted(ids)
    assert waits_subscribed.get(queue.redis, 0) == 0
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
    assert waits_subscribed.get(queue.redis, 0) == 0


async def test_a_timeout_of_zero_still_tells_the_tasks_already_final(queue: TaskQueue) -> None:
    """`wait --timeout 0` asks whether a task is done now: a finished one is told, not
    reported as not finished."""
    done, stuck = await queue.submit_many(["done", "stuck"])
    assert await queue.complete(await claim_one(queue, "w1"), "ok")
    info = await queue.wait(done, timeout=0)
    assert (info.state, info.result) == ("succeeded", "ok")
    seen: list[str] = []
    with pytest.raises(TimeoutError):
        async with contextlib.aclosing(queue.as_finished([stuck, done], timeout=0)) as it:
            async for finished in it:
                seen.append(finished.id)
    assert seen == [done]


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


async def test_a_task_requeued_between_the_two_reads_is_not_handed_over(
    queue: TaskQueue, redis_url: str,
) -> None:
    """The state read says dead; a requeue from the dead letters lands before the record is
    read whole: the wait goes on until the task is final again."""
    task_id = await queue.submit("x", max_attempts=1)
    await fail_until_dead(queue, "w1", task_id)
    other = TaskQueue(redis_from_url(redis_url), queue.name)
    get_many = queue.get_many
    requeued = False

    async def requeue_first(task_ids: Sequence[str]) -> list[TaskInfo]:
        nonlocal requeued
        if not requeued:
            requeued = await other.requeue_dead([task_id]) == 1
        return await get_many(task_ids)

    queue.get_many = requeue_first  # type: ignore[method-assign]
    try:
        waiting = asyncio.ensure_future(queue.wait(task_id, timeout=20))

        async def was_requeued() -> bool:
            return requeued

        await eventually(was_requeued, within=10)
        assert not waiting.done(), "queued again: not final"
        assert await other.complete(await claim_one(other, "w2"), "second time")
        info = await asyncio.wait_for(waiting, 10)
    finally:
        await other.redis.aclose()
    assert (info.state, info.result) == ("succeeded", "second time")


async def test_a_wait_whose_subscription_was_cut_sees_a_finish_at_once() -> None:
    """Redis drops the subscriber's connection (a restart, a proxy, CLIENT KILL); redis-py
    subscribes again by itself. A finish published before it did is caught up by the read
    that follows the new subscription, not a listening period (10 s) later."""
    with RedisServer() as server:
        client, admin = redis_from_url(server.url), redis_from_url(server.url)
        try:
            queue, worker = TaskQueue(client, "q"), TaskQueue(admin, "q")
            task_id = await queue.submit("x")
            task = await claim_one(worker, "w1")
            waiting = asyncio.ensure_future(queue.wait(task_id, timeout=20))
            await eventually(lambda: _subscribers(admin, queue.prefix + "done", 1))
            await asyncio.sleep(1.5)  # read, then quiet seconds
            async with admin.pipeline(transaction=True) as cut:  # in one step on the server
                await cut.execute_command("CLIENT", "KILL", "TYPE", "pubsub").execute()
            assert await worker.complete(task, "done")
            info = await asyncio.wait_for(waiting, 5)
        finally:
            await client.aclose()
            await admin.aclose()
    assert info.state == "succeeded"


async def test_a_server_without_sharded_pub_sub_is_read_each_second() -> None:
    """SSUBSCRIBE refused (Redis 6, or an ACL user without it): the wait polls its tasks."""
    with RedisServer(extra_args=("--rename-command", "SSUBSCRIBE", '""')) as server:
        client = redis_from_url(server.url)
        try:
            queue = TaskQueue(client, "q")
            task_id = await queue.submit("x")
            waiting = asyncio.ensure_future(queue.wait(task_id, timeout=20))
            await asyncio.sleep(0.3)
            assert await queue.complete(await claim_one(queue, "w1"), "done")
            info = await asyncio.wait_for(waiting, 3)
        finally:
            await client.aclose()
    assert info.state == "succeeded"


def test_the_sync_client_hands_over_each_task_as_it_ends(redis_url: str, queue_name: str) -> None:
    with SyncClient.from_url(redis_url) as client:
        queue = client.queue(queue_name)
        first, second, third = queue.submit_many(["a", "b", "c"])
        worker = queue.queue
        task = client._call(claim_one(worker, "w1"))
        assert client._call(worker.complete(task, "A"))
        finishes = queue.as_finished([third, second, first], timeout=10)
        assert next(finishes).result == "A", "the one final already comes first"
        assert queue.cancel(second) is protocol.CancelOutcome.CANCELLED
        assert next(finishes).id == second
        finishes.close()  # left before the last: the subscription ends with it
        assert waits_subscribed.get(worker.redis, 0) == 0
