"""Results: kept with a TTL, dead tasks kept until purged, and waiting for a result."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable

import pytest
import redis.asyncio as aioredis
from protocol_helpers import claim_one, eventually, shard_subscribers
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from agentpool.connection import redis_from_url
from agentpool.protocol import DoneSignal, TaskInfo, TaskNotFound, TaskQueue, task_queue
from agentpool.protocol.waiting import waits_subscribed
from agentpool.redis_server import RedisServer, free_port


async def test_unfinished_tasks_never_expire(redis: aioredis.Redis, queue: TaskQueue) -> None:
    running = await queue.submit("running")
    await claim_one(queue, "w:1")
    queued = await queue.submit("queued")
    delayed = await queue.submit("delayed", delay=60)
    for task_id in (running, queued, delayed):
        assert await redis.ttl(queue.task_key(task_id)) == -1


async def test_result_is_kept_with_the_queue_result_ttl(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    first = await queue.submit("job")
    await queue.complete(await claim_one(queue, "w:1"), "ok")
    assert 86_000 < await redis.ttl(queue.task_key(first)) <= 86_400

    await queue.configure(result_ttl=60)
    second = await queue.submit("job")
    await queue.complete(await claim_one(queue, "w:1"), "ok")
    assert 0 < await redis.ttl(queue.task_key(second)) <= 60
    cancelled = await queue.submit("job")
    await queue.cancel(cancelled)
    assert 0 < await redis.ttl(queue.task_key(cancelled)) <= 60


async def test_dead_task_is_kept_until_purged(redis: aioredis.Redis, queue: TaskQueue) -> None:
    await queue.configure(result_ttl=60)
    task_id = await queue.submit("job", max_attempts=1)
    await queue.fail(await claim_one(queue, "w:1"), "boom")
    assert await redis.ttl(queue.task_key(task_id)) == -1


async def test_wait_returns_when_another_coroutine_completes_the_task(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    task_id = await queue.submit("job")
    waiter = asyncio.create_task(queue.wait(task_id, timeout=5))

    async def subscribed() -> bool:
        return await shard_subscribers(redis, queue.prefix + "done") == 1

    await eventually(subscribed)
    assert not waiter.done()
    await queue.complete(await claim_one(queue, "w:1"), {"answer": 42})
    info = await waiter
    assert (info.id, info.state, info.result) == (task_id, "succeeded", {"answer": 42})


async def test_wait_is_woken_by_the_completion_not_by_polling(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    """The completion notifies the waiter; the 1 s re-check alone would miss this deadline."""
    task_id = await queue.submit("job")
    task = await claim_one(queue, "w:1")
    waiter = asyncio.create_task(queue.wait(task_id, timeout=0.8))

    async def subscribed() -> bool:
        return await shard_subscribers(redis, queue.prefix + "done") == 1

    await eventually(subscribed)
    await asyncio.sleep(0.05)
    await queue.fail(task, "boom", retryable=False)
    info = await waiter
    assert (info.state, info.error) == ("dead", "boom")


async def test_finishes_are_published_only_while_someone_listens(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    """Nobody listening: no PUBLISH per finish. The channel is ordered, so the first message
    after `listen_for_finishes` names the task that finished after it, never the one before."""
    done = DoneSignal(redis, queue.prefix + "done")
    await done.subscribe()
    try:
        unheard, heard = await queue.submit_many(["before", "after"])
        first, second = (await queue.claim("w:1", 2, 30)).tasks
        assert await queue.complete(first, None)
        await queue.listen_for_finishes()
        assert 0 < await redis.ttl(queue.prefix + "listening") <= 30
        assert await queue.complete(second, None)
        message = None
        async with asyncio.timeout(10):
            while message is None:
                message = await done.next(timeout=1)
        assert (first.id, second.id) == (unheard, heard)
        assert message == heard
    finally:
        await done.aclose()


async def test_wait_times_out_on_an_unfinished_task(queue: TaskQueue) -> None:
    task_id = await queue.submit("job")
    with pytest.raises(TimeoutError):
        await queue.wait(task_id, timeout=0.1)


async def test_wait_keeps_its_deadline_when_its_cancellation_is_lost(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 `asyncio.wait_for` drops a cancellation that arrives as its awaitable
    finishes (redis-py writes through it); the timeout's one cancellation must not be all
    that ends the wait."""
    task_id = await queue.submit("job")
    read_states = queue._finished_among

    async def read_that_loses_a_cancellation(task_ids: Iterable[str],
                                             pending: dict[str, str | None]) -> object:
        finished = await read_states(task_ids, pending)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.3)  # the wait's 0.1 s timeout cancels this
        return finished

    monkeypatch.setattr(queue, "_finished_among", read_that_loses_a_cancellation)
    waiting = asyncio.ensure_future(queue.wait(task_id, timeout=0.1))
    finished, _ = await asyncio.wait({waiting}, timeout=5)
    if not finished:
        waiting.cancel()
    assert finished, "the wait outlived its timeout by seconds"
    assert isinstance(waiting.exception(), TimeoutError)


async def ended(awaitable: Awaitable[object], within: float = 10) -> BaseException | None:
    """What `awaitable` raised; the test fails if it is still going after `within` seconds
    (it would have been retrying instead of raising)."""
    running = asyncio.ensure_future(awaitable)
    finished, _ = await asyncio.wait({running}, timeout=within)
    if not finished:
        running.cancel()
    assert finished, "still retrying"
    return running.exception()


async def test_wait_on_a_redis_never_reached_raises_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(task_queue, "WAIT_RECONNECT_SECONDS", 3600.0)
    client = redis_from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        error = await ended(TaskQueue(client, "q").wait("0" * 32, timeout=600))
    finally:
        await client.aclose()
    assert isinstance(error, RedisConnectionError)


async def test_wait_whose_credentials_stop_working_raises_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lost connection is retried (a failover); a reconnect the server refuses is not."""
    monkeypatch.setattr(task_queue, "WAIT_RECONNECT_SECONDS", 3600.0)
    with RedisServer() as server:
        client = redis_from_url(server.url)
        admin = redis_from_url(server.url)
        try:
            queue = TaskQueue(client, "q")
            task_id = await queue.submit("job")
            outcome = asyncio.ensure_future(ended(queue.wait(task_id, timeout=600)))
            await eventually(lambda: _has_subscriber(admin, queue))
            await admin.config_set("requirepass", "changed")
            await admin.client_kill_filter(_type="pubsub")
            await admin.client_kill_filter(_type="normal", skipme=True)
            error = await outcome
        finally:
            await client.aclose()
            await admin.aclose()
    assert isinstance(error, AuthenticationError)


async def _has_subscriber(admin: aioredis.Redis, queue: TaskQueue) -> bool:
    counts = await admin.execute_command("PUBSUB", "SHARDNUMSUB", queue.prefix + "done")
    return int(counts[1]) > 0


async def test_wait_for_an_unknown_task_raises_task_not_found(queue: TaskQueue) -> None:
    with pytest.raises(TaskNotFound):
        await queue.wait("no-such-task", timeout=1)


async def test_a_wait_for_a_task_that_vanished_says_redis_lost_its_data(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A task seen queued cannot vanish by the protocol (only a final one expires or is
    purged): when its record goes, Redis lost its data, and the waiter is told so."""
    task_id = await queue.submit({"n": 1})
    read = asyncio.Event()
    read_states = queue._finished_among

    async def read_and_tell(task_ids: Iterable[str],
                            pending: dict[str, str | None]) -> list[TaskInfo]:
        finished = await read_states(task_ids, pending)
        read.set()
        return finished

    queue._finished_among = read_and_tell  # type: ignore[method-assign]
    waiting = asyncio.ensure_future(queue.wait(task_id, timeout=5))
    await asyncio.wait_for(read.wait(), 5)
    await redis.delete(queue.task_key(task_id))  # as an empty restart does
    with pytest.raises(TaskNotFound, match="was queued and is gone: Redis lost its data"):
        await waiting


async def test_get_many_reads_tasks_in_the_order_asked_and_skips_unknown_ids(
    queue: TaskQueue,
) -> None:
    first = await queue.submit({"n": 1})
    second = await queue.submit({"n": 2}, priority=3)
    infos = await queue.get_many([second, "no-such-task", first])
    assert [(i.id, i.payload, i.priority) for i in infos] == [
        (second, {"n": 2}, 3), (first, {"n": 1}, 0),
    ]
    assert infos == [await queue.get(second), await queue.get(first)]


async def test_more_waits_than_the_pool_has_connections_all_return(
    queue: TaskQueue, redis_url: str,
) -> None:
    """Each subscribed wait holds a pooled connection while it reads the task on another: 150
    waits on a pool of 100 once took every connection and none could read. Past
    SUBSCRIBED_WAITS, waits poll instead; every one returns, and other calls go on."""
    ids = await queue.submit_many(range(150))
    waits = [asyncio.ensure_future(queue.wait(task_id, timeout=30)) for task_id in ids]
    worker = TaskQueue(redis_from_url(redis_url), queue.name)
    try:
        batch = await worker.claim("pod-w:i1", 150, 30)
        assert await worker.complete_many([(t, t.id) for t in batch.tasks]) == [True] * 150
        assert (await asyncio.wait_for(queue.figures(), 5)).stats["succeeded"] == 150
        done = await asyncio.wait_for(asyncio.gather(*waits), 15)
    finally:
        for waiting in waits:
            waiting.cancel()
        await worker.redis.aclose()
    assert [info.result for info in done] == ids
    assert waits_subscribed.get(queue.redis, 0) == 0
