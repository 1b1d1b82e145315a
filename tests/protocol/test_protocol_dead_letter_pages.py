"""Requeuing or purging every dead task runs one script call per page of at most
DEAD_LETTER_PAGE tasks, so that Redis serves others between them: one call over 600,000 dead
tasks passed Redis's 5 s script limit. Every task is handled once and counted once, a page
sent again after its reply was lost answers as it did, and tasks that die after the first page
are left for the next requeue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from protocol_helpers import drop_queue, eventually, queued_ids, task_keys
from redis.exceptions import ConnectionError as RedisConnectionError

from agentpool.protocol import DeadLettersCut, FailOutcome, TaskQueue
from agentpool.protocol.task_queue import DEAD_LETTER_PAGE

DEAD = 2 * DEAD_LETTER_PAGE + DEAD_LETTER_PAGE // 2


async def make_dead(queue: TaskQueue, count: int) -> list[str]:
    ids = await queue.submit_many([{"n": n} for n in range(count)], max_attempts=1)
    while True:
        batch = await queue.claim("w:1", 100, 30)
        if not batch.tasks:
            return ids
        outcomes = await asyncio.gather(*(queue.fail(t, "boom") for t in batch.tasks))
        assert set(outcomes) == {FailOutcome.DEAD}


@pytest.fixture
async def pages(redis: aioredis.Redis, queue: TaskQueue) -> AsyncIterator[list[list[Any]]]:
    """The replies of the queue's dead_letters script calls, in order."""
    replies: list[list[Any]] = []
    run = queue._run

    async def counted(name: str, *args: Any, client: Any = None) -> Any:
        reply = await run(name, *args, client=client)
        if name == "dead_letters":
            replies.append(reply)
        return reply

    queue._run = counted  # type: ignore[method-assign]
    yield replies
    await drop_queue(redis, queue)


async def test_requeue_all_goes_page_by_page_and_requeues_each_once(
    redis: aioredis.Redis, queue: TaskQueue, pages: list[list[Any]]
) -> None:
    ids = await make_dead(queue, DEAD)
    assert await queue.requeue_dead() == DEAD
    assert [int(p[0]) for p in pages] == [DEAD_LETTER_PAGE, DEAD_LETTER_PAGE, DEAD % 1000]
    assert await redis.zcard(queue.prefix + "dead") == 0
    assert sorted(await queued_ids(redis, queue)) == sorted(ids)
    infos = await queue.get_many(ids)
    assert {(i.state, i.attempts) for i in infos if i is not None} == {("queued", 0)}


async def test_purge_all_goes_page_by_page_and_deletes_each_once(
    redis: aioredis.Redis, queue: TaskQueue, pages: list[list[Any]]
) -> None:
    await make_dead(queue, DEAD)
    survivor = await queue.submit("alive")
    assert await queue.purge_dead() == DEAD
    assert [int(p[0]) for p in pages] == [DEAD_LETTER_PAGE, DEAD_LETTER_PAGE, DEAD % 1000]
    assert await redis.zcard(queue.prefix + "dead") == 0
    assert await task_keys(redis, queue) == {queue.task_key(survivor)}


async def test_ids_given_go_page_by_page_too(
    redis: aioredis.Redis, queue: TaskQueue, pages: list[list[Any]]
) -> None:
    ids = await make_dead(queue, DEAD)
    requeued = await queue.requeue_dead_counted([*ids, "not-a-task"])
    assert (requeued.requeued, requeued.revived) == (DEAD, 0)
    assert max(int(p[0]) for p in pages) == DEAD_LETTER_PAGE
    assert sorted(await queued_ids(redis, queue)) == sorted(ids)


async def test_a_page_sent_again_answers_as_the_first_time_and_handles_nothing_more(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    """What the client's own resend does after a reply lost with its connection: the same
    call, same id. Handling the next page instead would leave the first one uncounted."""
    await make_dead(queue, 5)
    first = await queue._run("dead_letters", "requeue", "call-1", "", 2)
    again = await queue._run("dead_letters", "requeue", "call-1", "", 2)
    assert again == first and int(first[0]) == 2 and int(first[2]) == 1
    assert await redis.zcard(queue.prefix + "dead") == 3
    assert await queue.requeue_dead() == 3


async def test_tasks_that_die_after_the_first_page_are_left_dead(
    redis: aioredis.Redis, queue: TaskQueue, pages: list[list[Any]]
) -> None:
    """A requeue of every dead task ends: one requeued that dies again meanwhile (its handler
    still broken) is not requeued once more by the same call."""
    await make_dead(queue, DEAD_LETTER_PAGE + 1)
    await queue.submit("late", max_attempts=1)
    late = (await queue.claim("w:2", 1, 30)).tasks[0]
    run = queue._run

    async def dying_after_the_first_page(name: str, *args: Any, client: Any = None) -> Any:
        reply = await run(name, *args, client=client)
        if len(pages) == 1 and name == "dead_letters" and late.id not in dead_ids:
            upto = int(reply[3])

            async def past_it() -> bool:
                seconds, micros = await redis.time()
                return seconds * 1000 + micros // 1000 > upto

            await eventually(past_it)
            assert await queue.fail(late, "late") == FailOutcome.DEAD
            dead_ids.add(late.id)
        return reply

    dead_ids: set[str] = set()
    queue._run = dying_after_the_first_page  # type: ignore[method-assign]
    assert await queue.requeue_dead() == DEAD_LETTER_PAGE + 1
    assert dead_ids == {late.id}
    assert await redis.zcard(queue.prefix + "dead") == 1
    assert await redis.zscore(queue.prefix + "dead", late.id) is not None


async def test_a_requeue_cut_short_by_redis_says_how_much_it_did(queue: TaskQueue) -> None:
    """Redis lost after the first page: the caller learns that 1,000 were requeued (the CLI
    says so, and to run it again) instead of a bare connection error."""
    await make_dead(queue, DEAD)
    run = queue._run
    calls = 0

    async def failing(name: str, *args: Any, client: Any = None) -> Any:
        nonlocal calls
        if name == "dead_letters":
            calls += 1
            if calls == 2:
                raise RedisConnectionError("Connection refused")
        return await run(name, *args, client=client)

    queue._run = failing  # type: ignore[method-assign]
    with pytest.raises(DeadLettersCut) as cut:
        await queue.requeue_dead()
    assert (cut.value.handled, type(cut.value.__cause__)) == (
        DEAD_LETTER_PAGE, RedisConnectionError)
    queue._run = run  # type: ignore[method-assign]
    assert await queue.requeue_dead() == DEAD - DEAD_LETTER_PAGE
