"""Cancelling every task waiting to run at once (`cancel_waiting`, `agentpool cancel --waiting`)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from protocol_helpers import claim_one

from agentpool.protocol import FailOutcome, TaskQueue


async def states(queue: TaskQueue, ids: list[str]) -> list[str]:
    infos = [await queue.get(task_id) for task_id in ids]
    return [info.state if info else "gone" for info in infos]


async def test_every_waiting_task_is_cancelled_and_running_ones_go_on(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    running = await queue.submit({"n": 0})
    task = await claim_one(queue, "w1")
    assert task.id == running
    retrying = await queue.submit({"retry": True})
    retry_run = await claim_one(queue, "w1")
    assert retry_run.id == retrying
    assert await queue.fail(retry_run, "boom", delay=3600) == FailOutcome.RETRY
    queued = [await queue.submit({"n": n}, priority=n % 10) for n in range(1, 25)]
    delayed = await queue.submit({"later": True}, delay=3600)

    assert await queue.cancel_waiting(batch=5) == 26
    assert await states(queue, [*queued, delayed, retrying]) == ["cancelled"] * 26
    info = await queue.get(queued[0])
    assert info is not None and info.error == "cancelled"
    figures = await queue.figures()
    assert (figures.queued, figures.delayed, figures.in_flight) == (0, 0, 1)
    assert figures.stats.get("cancelled") == 26
    assert await queue.complete(task, "done")  # the running task was left to finish


async def test_tasks_submitted_after_the_call_began_are_left(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """What is cancelled is what was submitted before the call: a submit landing between its
    batches, even at a higher priority (ahead of the rest), stays queued."""
    old = [await queue.submit({"n": n}) for n in range(6)]
    later: list[str] = []
    real_run = queue._run

    async def submit_between_batches(name: str, *args: object, **kwargs: object) -> object:
        reply = await real_run(name, *args, **kwargs)
        if name == "cancel_waiting" and not later:
            later.append(await queue.submit({"late": True}, priority=9))
            later.append(await queue.submit({"late": True}, delay=3600))
        return reply

    queue._run = submit_between_batches  # type: ignore[method-assign]
    assert await queue.cancel_waiting(batch=2) == 6
    assert await states(queue, old) == ["cancelled"] * 6
    assert await states(queue, later) == ["queued", "delayed"]


async def test_a_waiter_learns_its_task_was_cancelled(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    task_id = await queue.submit({})
    waiting = asyncio.create_task(queue.wait(task_id, timeout=5))
    assert await queue.cancel_waiting() == 1
    info = await waiting
    assert info.state == "cancelled"


async def test_an_empty_queue_cancels_nothing(queue: TaskQueue) -> None:
    assert await queue.cancel_waiting() == 0
