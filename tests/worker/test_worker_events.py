"""Handlers emit events through their context: batched, tagged with the attempt, recorded
before the run's outcome, followed live by a producer."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import redis.asyncio as aioredis
from worker_helpers import (
    HANDLERS,
    eventually,
    running,
    settings,
    task_in,
    worker_env,
    worker_processes,
)

from agentpool.protocol import TaskEvent, TaskQueue


async def follow(queue: TaskQueue, task_id: str) -> list[TaskEvent]:
    return [event async for event in queue.events(task_id, block_seconds=0.2)]


def tokens(events: list[TaskEvent], attempt: int) -> list[int]:
    return [e.data["i"] for e in events if e.kind == "token" and e.attempt == attempt]


async def test_events_of_each_attempt_reach_a_live_follower_before_the_outcome(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:streamer")) as worker:
        task_id = await queue.submit({"tokens": 40, "fail_until": 2, "pause": 0.002})
        events = await asyncio.wait_for(follow(queue, task_id), 20)
        rounds = worker.metrics.round_trips._value.get()
    assert tokens(events, 1) == list(range(40))
    assert tokens(events, 2) == list(range(40))
    progress = [e.data for e in events if e.kind == "progress" and e.attempt == 2]
    assert progress[-1] == {"fraction": 1.0, "message": "token 40 of 40"}
    assert events[-1].kind == "final" and events[-1].data == {"state": "succeeded"}
    assert events[-1].attempt == 2
    info = await queue.get(task_id)
    assert info is not None and info.result == {"tokens": 40, "attempt": 2}
    assert rounds < 160, "events were not batched into shared round trips"


async def test_a_sync_handler_emits_from_its_thread(
    redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:sync_streamer")):
        task_id = await queue.submit({"tokens": 25})
        await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "success")
    events = [e async for e in queue.events(task_id, follow=False)]
    assert tokens(events, 1) == list(range(25))
    info = await queue.get(task_id)
    assert info is not None and info.progress is not None
    assert (info.progress.fraction, info.progress.message) == (1.0, "all tokens")


async def test_a_worker_process_streams_events_to_a_follower(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(redis_url, queue_name, f"{HANDLERS}:streamer"))
        task_id = await queue.submit({"tokens": 30, "pause": 0.01})
        events = await asyncio.wait_for(follow(queue, task_id), 30)
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code(20) == 0
    assert tokens(events, 1) == list(range(30))
    assert [e.kind for e in events][-1] == "final"
