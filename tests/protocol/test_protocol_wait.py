"""A run's wait for a worker counts from the moment its task was last ready to run: a delay, a
retry's backoff, the tasks it runs after and an earlier run are not time spent waiting for a
worker (the wait-time alert would fire for every delayed task). Where a step happens after a
claim, the tests let a known time pass first, so that a wait counted from the submit shows.

"""

from __future__ import annotations

import asyncio

from protocol_helpers import claim_one, claim_within

from agentpool.protocol import ClaimedTask, FailOutcome, TaskQueue

STEP = 0.05
STEP_MS = 50


def waited_exactly_since_ready(task: ClaimedTask) -> None:
    assert task.ready_ms is not None
    assert task.wait_seconds == max(0.0, (task.claimed_ms - task.ready_ms) / 1000)


async def test_a_task_queued_at_its_submit_waits_from_its_submit(queue: TaskQueue) -> None:
    await queue.submit("now")
    task = await claim_one(queue, "w:1")
    assert task.ready_ms == task.created_ms
    waited_exactly_since_ready(task)


async def test_a_delayed_task_waits_from_the_end_of_its_delay(queue: TaskQueue) -> None:
    await queue.submit("later", delay=0.3)
    task = await claim_within(queue, "w:1")
    assert task.ready_ms is not None and task.ready_ms >= task.created_ms + 300
    waited_exactly_since_ready(task)


async def test_a_retry_waits_from_the_end_of_its_backoff(queue: TaskQueue) -> None:
    await queue.submit("flaky")
    first = await claim_one(queue, "w:1")
    assert await queue.fail(first, "boom", delay=0.2) == FailOutcome.RETRY
    retry = await claim_within(queue, "w:1")
    assert retry.ready_ms is not None and retry.ready_ms >= first.claimed_ms + 200
    waited_exactly_since_ready(retry)


async def test_a_requeued_task_waits_from_its_requeue(queue: TaskQueue) -> None:
    await queue.submit("held by a worker that died")
    lost = await claim_one(queue, "w:lost")
    await asyncio.sleep(STEP)
    await queue.requeue_owner("w:lost")
    again = await claim_one(queue, "w:2")
    assert again.ready_ms is not None and again.ready_ms >= lost.claimed_ms + STEP_MS
    waited_exactly_since_ready(again)


async def test_a_task_requeued_from_the_dead_letters_waits_from_that_requeue(
    queue: TaskQueue,
) -> None:
    await queue.submit("poison", max_attempts=1)
    first = await claim_one(queue, "w:1")
    assert await queue.fail(first, "bad input", retryable=False) == FailOutcome.DEAD
    await asyncio.sleep(STEP)
    assert await queue.requeue_dead() == 1
    again = await claim_one(queue, "w:1")
    assert again.ready_ms is not None and again.ready_ms >= first.claimed_ms + STEP_MS
    waited_exactly_since_ready(again)


async def test_a_task_after_another_waits_from_that_ones_success(queue: TaskQueue) -> None:
    parent_id = await queue.submit("first")
    await queue.submit("second", after=[parent_id])
    parent = await claim_one(queue, "w:1")
    await asyncio.sleep(STEP)
    assert await queue.complete(parent, "done")
    child = await claim_one(queue, "w:1")
    assert child.payload_raw == '"second"'
    assert child.ready_ms is not None and child.ready_ms >= parent.claimed_ms + STEP_MS
    assert child.created_ms <= parent.claimed_ms
    waited_exactly_since_ready(child)
