"""Cancel: queued and delayed tasks are removed, running ones stop cooperatively."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from protocol_helpers import claim_one

from agentpool.protocol import CancelOutcome, FailOutcome, TaskQueue, WorkerInfo


async def test_cancel_queued_task_removes_it(redis: aioredis.Redis, queue: TaskQueue) -> None:
    task_id = await queue.submit("job")
    assert await queue.cancel(task_id) == CancelOutcome.CANCELLED
    info = await queue.get(task_id)
    assert info is not None and info.state == "cancelled"
    assert await redis.zcard(queue.prefix + "queued") == 0
    assert (await queue.claim("w:1", 1, 30)).tasks == []


async def test_cancel_delayed_task_removes_it(redis: aioredis.Redis, queue: TaskQueue) -> None:
    task_id = await queue.submit("job", delay=0.1)
    assert await queue.cancel(task_id) == CancelOutcome.CANCELLED
    assert await redis.zcard(queue.prefix + "delayed") == 0
    await asyncio.sleep(0.1)
    assert (await queue.claim("w:1", 1, 30)).tasks == []
    info = await queue.get(task_id)
    assert info is not None and info.state == "cancelled"


async def test_cancel_running_task_is_requested_and_its_worker_records_it(
    redis: aioredis.Redis, queue: TaskQueue
) -> None:
    task_id = await queue.submit("job")
    task = await claim_one(queue, "pod-a:i1")
    assert await queue.cancel(task_id) == CancelOutcome.REQUESTED
    info = await queue.get(task_id)
    assert info is not None and info.state == "running"

    beat = await queue.heartbeat(WorkerInfo("pod-a", "i1", 1), {task.id: task.token}, 30)
    assert beat.cancel == [task_id] and beat.lost == []
    assert await queue.cancelled(task) == FailOutcome.CANCELLED
    info = await queue.get(task_id)
    assert info is not None and info.state == "cancelled"
    assert await redis.zcard(queue.prefix + "leases") == 0
    assert await queue.held_by("pod-a:i1") == set()


async def test_failure_after_cancel_request_records_cancelled_not_retry(
    queue: TaskQueue,
) -> None:
    task_id = await queue.submit("job")
    task = await claim_one(queue, "pod-a:i1")
    await queue.cancel(task_id)
    assert await queue.fail(task, "interrupted") == FailOutcome.CANCELLED
    assert (await queue.claim("w:1", 1, 30)).tasks == []


async def test_task_with_cancel_request_is_not_requeued_when_its_worker_dies(
    queue: TaskQueue,
) -> None:
    task_id = await queue.submit("job")
    await claim_one(queue, "pod-a:i1")
    await queue.cancel(task_id)
    result = await queue.requeue_owner("pod-a:i1")
    assert (result.requeued, result.cancelled) == (0, 1)
    info = await queue.get(task_id)
    assert info is not None and info.state == "cancelled"


async def test_cancel_finished_task_changes_nothing(queue: TaskQueue) -> None:
    task_id = await queue.submit("job")
    await queue.complete(await claim_one(queue, "w:1"), "result")
    assert await queue.cancel(task_id) == CancelOutcome.FINISHED
    info = await queue.get(task_id)
    assert info is not None and (info.state, info.result) == ("succeeded", "result")


async def test_cancel_unknown_task(queue: TaskQueue) -> None:
    assert await queue.cancel("no-such-task") == CancelOutcome.UNKNOWN
