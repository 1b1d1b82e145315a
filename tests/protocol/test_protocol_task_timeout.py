"""A task's own timeout: `submit(..., task_timeout=seconds)` is stored with the task and handed to
every claim of it; the worker keeps the shorter of it and the pool's task timeout
(tests/worker)."""

from __future__ import annotations

import asyncio
import re

import pytest
import redis.asyncio as aioredis
from protocol_helpers import claim_one, claim_within, fail_until_dead
from redis.exceptions import ResponseError

from agentpool.client import SyncClient
from agentpool.protocol import FailOutcome, ProtocolError, TaskQueue


async def test_a_claim_hands_over_the_tasks_timeout_and_none_without_one(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    timed = await queue.submit({"n": 1}, task_timeout=2.5)
    plain = await queue.submit({"n": 2})
    batch = await queue.claim("w1", 2, 30)
    assert {t.id: t.timeout_ms for t in batch.tasks} == {timed: 2500, plain: None}
    info = await queue.get(timed)
    assert info is not None and info.timeout_ms == 2500
    other = await queue.get(plain)
    assert other is not None and other.timeout_ms is None


async def test_every_attempt_gets_the_timeout(queue: TaskQueue, redis: aioredis.Redis) -> None:
    task_id = await queue.submit({}, task_timeout=7)
    first = await claim_one(queue, "w1")
    assert await queue.fail(first, "boom", delay=0) == FailOutcome.RETRY
    second = await claim_one(queue, "w2")
    assert (second.id, second.attempts, second.timeout_ms) == (task_id, 2, 7000)


async def test_submit_many_and_delayed_tasks_carry_it(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    ids = await queue.submit_many([{"n": n} for n in range(3)], task_timeout=0.25)
    delayed = await queue.submit({}, delay=0.05, task_timeout=9)
    batch = await queue.claim("w1", 3, 30)
    assert [(t.id, t.timeout_ms) for t in batch.tasks] == [(i, 250) for i in ids]
    promoted = await claim_within(queue, "w1")  # the claim that promotes it once due
    assert (promoted.id, promoted.timeout_ms) == (delayed, 9000)


async def test_submits_gathered_into_one_call_keep_each_its_own_timeout(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Concurrent submits beyond the few in flight go to Redis as one call (coalesce.py)."""
    timeouts = [None, 0.001, 1, 2.5, None, 604800, 7] * 10
    ids = await asyncio.gather(*(queue.submit({"n": n}, task_timeout=t)
                                 for n, t in enumerate(timeouts)))
    stored = {task.id: task.timeout_ms for task in (await queue.claim("w1", 100, 30)).tasks}
    assert [stored[i] for i in ids] == [None if t is None else round(t * 1000) for t in timeouts]


async def test_the_blocking_client_submits_with_a_timeout(
    queue: TaskQueue, redis: aioredis.Redis, redis_url: str,
) -> None:
    with SyncClient.from_url(redis_url) as client:
        task_id = client.queue(queue.name).submit({}, task_timeout=0.001)
        many = client.queue(queue.name).submit_many([{}], task_timeout=604800)
    batch = await queue.claim("w1", 2, 30)
    assert [(t.id, t.timeout_ms) for t in batch.tasks] == [(task_id, 1), (many[0], 604800000)]


async def test_a_dead_letter_requeued_by_hand_keeps_its_timeout(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Unlike an expiry (a time after the submit), a timeout is the run's own measure."""
    task_id = await queue.submit({}, max_attempts=1, task_timeout=3)
    await fail_until_dead(queue, "w1", task_id)
    assert await queue.requeue_dead([task_id]) == 1
    task = await claim_one(queue, "w1")
    assert (task.id, task.timeout_ms) == (task_id, 3000)


@pytest.mark.parametrize(("timeout", "message"), [
    (0, "task_timeout must be from 0.001 to 604800 seconds (a week), got 0"),
    (-1, "task_timeout must be from 0.001 to 604800 seconds (a week), got -1"),
    (0.0004, "got 0.0004\\Z"),
    (604800.5, "got 604800.5\\Z"),
    (float("nan"), "task_timeout must be a number of seconds, got nan"),
    (float("inf"), "task_timeout must be a number of seconds, got inf"),
    (True, "task_timeout must be a number of seconds, got True"),
    (10**400, "task_timeout must be a number of seconds, got 1000"),
    ("5", "task_timeout must be a number of seconds, got '5'"),
])
async def test_a_timeout_out_of_bounds_is_refused_and_nothing_stored(
    queue: TaskQueue, redis: aioredis.Redis, timeout: object, message: str,
) -> None:
    pattern = message if "\\" in message else re.escape(message)
    with pytest.raises(ProtocolError, match=pattern):
        await queue.submit({}, task_timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="task_timeout must be"):
        await queue.submit_many([{}, {}], task_timeout=timeout)  # type: ignore[arg-type]
    assert (await queue.figures()).used is False


async def test_a_submit_whose_values_do_not_divide_into_tasks_is_refused(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """One task in the layout of an older client (a value fewer): read as the script's, it
    would take its fields from the wrong places."""
    full = queue._submit_args({}, 0, 0, None, None)
    with pytest.raises(ResponseError,
                       match=f"submit: ARGV is the prefix and {len(full)} values per task"):
        await queue._run("submit", *full[:-1])
    assert (await queue.figures()).used is False
