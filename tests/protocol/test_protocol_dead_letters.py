"""The dead-letter queue: listing with the last error, requeue and purge."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from protocol_helpers import claim_one, queued_ids

from agentpool.protocol import FailOutcome, ProtocolError, TaskQueue


async def make_dead(queue: TaskQueue, count: int) -> list[str]:
    ids = []
    for n in range(count):
        task_id = await queue.submit({"n": n}, max_attempts=1)
        task = await claim_one(queue, "w:1")
        assert await queue.fail(task, f"error {n}") == FailOutcome.DEAD
        ids.append(task_id)
    return ids


async def test_dead_letters_lists_dead_tasks_with_their_last_error(queue: TaskQueue) -> None:
    ids = await make_dead(queue, 3)
    await queue.submit("alive")
    dead = await queue.dead_letters()
    assert {(d.id, d.error, d.payload["n"]) for d in dead} == {
        (ids[n], f"error {n}", n) for n in range(3)}
    assert len(await queue.dead_letters(limit=2)) == 2


async def test_requeue_dead_single_and_all(redis: aioredis.Redis, queue: TaskQueue) -> None:
    a, b, c = await make_dead(queue, 3)
    assert await queue.requeue_dead([a]) == 1
    assert await queue.requeue_dead([a]) == 0
    assert await queued_ids(redis, queue) == [a]
    assert {d.id for d in await queue.dead_letters()} == {b, c}
    task = await claim_one(queue, "w:2")
    assert (task.id, task.attempts) == (a, 1)
    assert await queue.complete(task, "second chance")

    assert await queue.requeue_dead() == 2
    assert await queue.dead_letters() == []
    assert set(await queued_ids(redis, queue)) == {b, c}
    for task_id in (b, c):
        info = await queue.get(task_id)
        assert info is not None and (info.state, info.attempts) == ("queued", 0)


async def test_purge_dead_single_and_all(redis: aioredis.Redis, queue: TaskQueue) -> None:
    a, b, c = await make_dead(queue, 3)
    alive = await queue.submit("alive")
    assert await queue.purge_dead([a]) == 1
    assert await queue.get(a) is None
    assert await queue.purge_dead([alive]) == 0
    assert {d.id for d in await queue.dead_letters()} == {b, c}

    assert await queue.purge_dead() == 2
    assert await queue.get(b) is None and await queue.get(c) is None
    assert await redis.zcard(queue.prefix + "dead") == 0
    info = await queue.get(alive)
    assert info is not None and info.state == "queued"


async def test_an_empty_list_of_ids_requeues_and_purges_nothing(queue: TaskQueue) -> None:
    """None means every dead task; an empty selection (a filter that matched nothing) must
    not: a purge cannot be undone."""
    dead = set(await make_dead(queue, 2))
    assert await queue.purge_dead([]) == 0
    assert await queue.requeue_dead([]) == 0
    assert (await queue.requeue_dead_counted([])).requeued == 0
    assert {d.id for d in await queue.dead_letters()} == dead


async def test_listing_a_state_that_does_not_exist_is_refused_in_words(queue: TaskQueue) -> None:
    with pytest.raises(ProtocolError, match="no task state 'bogus': use one of queued"):
        await queue.list_tasks("bogus")
